"""The steerable endpoint on Ray Serve: NP-DPO generation and NP-BTL scoring for users known by
a few of their choices, behind a FastAPI ingress (OpenAPI docs at /docs).

    POST   /generate              {prompt, user_id | choices | context_embeddings, max_new_tokens?}
    POST   /score                 {prompt, responses, user_id | choices | context_embeddings}
    POST   /users/{user_id}/choices   {choices | context_embeddings}   add to a stored user
    POST   /users/{user_id}/next-question  {candidates?, selector?}   the pair to ask them next
    GET    /users/{user_id}       number of choices, when updated
    DELETE /users/{user_id}       nothing of the user is kept afterwards
    GET    /health                status and the replica's device (cpu, cuda:0)

Generation requests of *different* users are batched (`@serve.batch`), each row with its own z.
A stored user's z is cached per replica and recomputed only when their choices change (the
store's version). Users are stored as embeddings of their choices, not text (`user_store.py`).
Malformed input is a 4xx with a message; the replica keeps serving. With tokens set, every route
but /health wants `Authorization: Bearer TOKEN` (`access.py`); the Host header is checked.
"""

import asyncio
import contextlib
import datetime
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from ray import serve

from npalign.access import Access, Boundary, Caller, caller, configure
from npalign.config import ServeConfig
from npalign.data.preferences import PreferenceDataError
from npalign.data.sequences import prompt_tokens
from npalign.data.text import load_records
from npalign.files import cache_dir
from npalign.inference import (
    Candidate,
    Choice,
    ContextEmbeddings,
    check_reward_model,
    embed_candidates,
    embed_choices,
    embed_responses,
    generate,
    next_question,
    user_latents,
    user_rewards,
)
from npalign.registry import QUESTION_SELECTORS
from npalign.stores.base import EraseIncomplete, open_store


class Request(BaseModel):
    # NaN or infinite embeddings would flow through z into every logit: reject them here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must hold more than whitespace")
    return text


Text = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class ChoiceIn(Request):
    prompt: Text
    chosen: Text = Field(description="the response the user preferred")
    rejected: Text


class Embeddings(Request):
    """Precomputed embeddings of the chosen and rejected responses, (pairs, dim) each."""

    chosen: list[list[float]] = Field(min_length=1)
    rejected: list[list[float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _rectangular(self):
        widths = {len(row) for row in self.chosen + self.rejected}
        if len(widths) != 1 or len(self.chosen) != len(self.rejected):
            raise ValueError(
                f"chosen ({len(self.chosen)} rows) and rejected ({len(self.rejected)} rows) must "
                f"have as many rows, all of one width (got widths {sorted(widths)})"
            )
        return self


class Context(Request):
    """Who the answer is for: a stored user, or a context given in the request."""

    user_id: str | None = Field(None, min_length=1, max_length=200)
    choices: list[ChoiceIn] | None = Field(None, min_length=1)
    context_embeddings: Embeddings | None = None

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("user_id", "choices", "context_embeddings") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of user_id, choices, context_embeddings (got {given or 'none'})"
            )
        return self


class GenerateRequest(Context):
    prompt: Text
    max_new_tokens: int | None = Field(None, gt=0)


class GenerateResponse(BaseModel):
    response: str
    context_pairs: int


class ScoreRequest(Context):
    prompt: Text
    responses: list[Text] = Field(min_length=1, max_length=64)


class ScoreResponse(BaseModel):
    scores: list[float]  # r(x, y, z) per response: higher is preferred by this user
    context_pairs: int


class AddChoicesRequest(Request):
    choices: list[ChoiceIn] | None = Field(None, min_length=1)
    context_embeddings: Embeddings | None = None
    request_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the client's id for this post: a retry with the same id adds nothing",
    )

    @model_validator(mode="after")
    def _one_source(self):
        if (self.choices is None) == (self.context_embeddings is None):
            raise ValueError("give exactly one of choices, context_embeddings")
        return self


class CandidateIn(Request):
    prompt: Text
    response_a: Text
    response_b: Text


class NextQuestionRequest(Request):
    candidates: list[CandidateIn] | None = Field(
        None, min_length=1, description="pairs to choose from; none: the configured pool"
    )
    selector: str | None = Field(
        None,
        description="epig, bald, lookahead, entropy or random; default: bald for a variational "
        "NP-BTL, lookahead for a deterministic one",
    )

    @field_validator("selector")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        return name if name is None else QUESTION_SELECTORS.check(name)


class NextQuestionResponse(BaseModel):
    index: int  # in the request's candidates, or in the configured pool
    prompt: str
    response_a: str
    response_b: str
    information: float  # the selector's score: for bald, nats of information about z
    selector: str
    context_pairs: int


class UserSummary(BaseModel):
    user_id: str
    choices: int
    updated: str  # ISO 8601, UTC


def texts_of(request: BaseModel) -> list[str]:
    """Every free text of a request (prompt, choices, responses), for the length limit."""
    out = [getattr(request, "prompt", None), *(getattr(request, "responses", None) or [])]
    for choice in getattr(request, "choices", None) or []:
        out += [choice.prompt, choice.chosen, choice.rejected]
    for candidate in getattr(request, "candidates", None) or []:
        out += [candidate.prompt, candidate.response_a, candidate.response_b]
    return [t for t in out if t is not None]


app = FastAPI(
    title="npalign steerable endpoint",
    description="Generation and scoring adapted to a user from a few of their choices.",
)


app.add_middleware(Boundary)
Authorized = Annotated[Caller, Depends(caller)]


@app.exception_handler(RequestValidationError)
async def _invalid_request(request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422, without echoing the bad input back: a NaN in it cannot be written as
    JSON, which turned a malformed request into a 500."""
    errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def generate_isolated(
    checkpoint, prompts: list[str], z: torch.Tensor, limits: list[int]
) -> list[str | Exception]:
    """The rows in one `generate` call; if that raises, each row alone, so a row that fails
    (whatever got past validation) fails only its own request: its exception takes its place.
    (Defined above the deployment: Serve captures the class and what it uses when decorating.)"""
    try:
        return generate(checkpoint, prompts, z, limits)
    except Exception:
        out: list[str | Exception] = []
        for i in range(len(prompts)):
            try:
                out += generate(checkpoint, prompts[i : i + 1], z[i : i + 1], limits[i : i + 1])
            except Exception as error:
                out.append(error)
        return out


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(app)
class SteerableEndpoint:
    def __init__(self, config: dict[str, Any]):
        from npalign.models.policy import available_device, load_policy
        from npalign.models.reward import load_reward_model

        self.config = ServeConfig.model_validate(config)
        configure(
            Access(
                self.config.admin_token,
                self.config.user_tokens,
                frozenset(self.config.allowed_hosts),
                self.config.max_body_bytes,
            )
        )
        torch.set_num_threads(self.config.threads_per_replica)
        # Ray shows a replica only the GPU it was given (gpus_per_replica), none otherwise.
        device = available_device()
        self.policy = load_policy(self.config.policy, device)
        if self.policy.decoding.max_word_run:
            self.policy.word_tokens  # noqa: B018 -- decoded now (0.2 s), not by the first request
        positions = self.policy.policy.lm.config.max_position_embeddings
        if self.config.max_prompt_tokens + self.config.max_new_tokens > positions:
            raise ValueError(
                f"max_prompt_tokens {self.config.max_prompt_tokens} + max_new_tokens "
                f"{self.config.max_new_tokens} exceed the model's {positions} positions"
            )
        self.reward = None
        if self.config.reward:
            self.reward = load_reward_model(self.config.reward).to(device)
        if self.reward is not None:
            check_reward_model(self.reward, self.policy.feature_dim, self.config.reward)
        self.store = open_store(
            self.config.store or str(cache_dir("users.db")), self.config.max_stored_choices
        )
        # user → (store version, z), least recently used first; versions never repeat, so an
        # entry of a user deleted and created again is never served.
        self.latents: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()
        self.latents_lock = threading.Lock()  # requests run `_latent` in threads at once
        # The configured question pool, read, checked and embedded once, at start-up.
        self.pool: list[Candidate] = []
        self.pool_features: tuple[np.ndarray, np.ndarray] | None = None
        if self.config.question_pool:
            self.pool = read_question_pool(self.config.question_pool, self.config.max_text_chars)
            self.pool_features = embed_candidates(self.policy, self.pool)
        batch = self._generate_batch
        batch.set_max_batch_size(self.config.max_batch_size)
        batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    def check_health(self) -> None:
        self.store.get("")  # the store answers (raises, so Serve restarts the replica, if not)

    # --- contexts → z ----------------------------------------------------------------------

    def _check_size(self, request: BaseModel) -> None:
        """Counts and lengths within the limits, before any text is embedded or array built."""
        limit = self.config.max_text_chars
        longest = max((len(t) for t in texts_of(request)), default=0)
        if longest > limit:
            raise HTTPException(413, f"a text of {longest} characters: at most {limit}")
        given = getattr(request, "choices", None) or getattr(request, "context_embeddings", None)
        pairs = len(given.chosen) if isinstance(given, Embeddings) else len(given or [])
        if pairs > self.config.max_context_pairs:
            raise HTTPException(
                413,
                f"{pairs} context pairs: at most {self.config.max_context_pairs} "
                "(max_context_pairs)",
            )
        if isinstance(given, Embeddings) and len(given.chosen[0]) != self.policy.feature_dim:
            raise HTTPException(
                422,
                f"context embeddings have dimension {len(given.chosen[0])}; this model "
                f"expects {self.policy.feature_dim}",
            )

    def _context(self, request: Context | AddChoicesRequest) -> ContextEmbeddings:
        """The request's context as embeddings; call `_check_size` first. Runs in a thread."""
        if request.context_embeddings is not None:
            e = request.context_embeddings
            context = ContextEmbeddings(
                np.asarray(e.chosen, np.float32), np.asarray(e.rejected, np.float32)
            )
            # Finite as JSON floats, but 1e39 is infinite in float32 and would make z NaN.
            if not (np.isfinite(context.chosen).all() and np.isfinite(context.rejected).all()):
                raise HTTPException(422, "context embeddings must be finite as float32")
            return context
        choices = [Choice(c.prompt, c.chosen, c.rejected) for c in request.choices]
        return embed_choices(self.policy, [choices])[0]

    def _stored(self, user_id: str):
        state = self.store.get(user_id)
        if state is None:
            with self.latents_lock:  # deleted (maybe through another replica): forget their z
                self.latents.pop(user_id, None)
            raise HTTPException(404, f"unknown user {user_id!r}: add choices first")
        return state, self._latest(state)

    def _latest(self, state) -> ContextEmbeddings:
        """The context a stored user is read by: their most recent choices."""
        keep = self.config.max_context_pairs
        return ContextEmbeddings(state.chosen[-keep:], state.rejected[-keep:])

    def _latent(self, request: Context) -> tuple[torch.Tensor, int]:
        """(z of shape (latent,), number of context pairs) for the policy."""
        if request.user_id is None:
            context = self._context(request)
            return user_latents(self.policy, [context])[0], len(context.chosen)
        state, context = self._stored(request.user_id)
        with self.latents_lock:
            cached = self.latents.get(request.user_id)
        if cached is None or cached[0] != state.version:
            cached = (state.version, user_latents(self.policy, [context])[0])
        with self.latents_lock:
            self.latents[request.user_id] = cached
            self.latents.move_to_end(request.user_id)
            while len(self.latents) > self.config.max_cached_users:
                self.latents.popitem(last=False)
        return cached[1], len(context.chosen)

    # --- endpoints -------------------------------------------------------------------------

    @app.post("/generate", response_model=GenerateResponse)
    async def generate(self, request: GenerateRequest, who: Authorized) -> GenerateResponse:
        if request.user_id is not None:
            who.check_may_act_for(request.user_id)
        self._check_size(request)
        new_tokens = request.max_new_tokens or self.config.default_new_tokens
        if new_tokens > self.config.max_new_tokens:
            raise HTTPException(
                422,
                f"max_new_tokens {new_tokens} is over this endpoint's limit of "
                f"{self.config.max_new_tokens}",
            )
        # As the model reads it: inside the chat template.
        length = len(prompt_tokens(self.policy.tokenizer, request.prompt))
        if length > self.config.max_prompt_tokens:
            raise HTTPException(
                413,
                f"prompt has {length} tokens in the chat template: at most "
                f"{self.config.max_prompt_tokens}",
            )
        z, pairs = await asyncio.to_thread(self._latent, request)
        response = await self._generate_batch((request.prompt, z, new_tokens))
        if isinstance(response, ValueError):
            raise HTTPException(422, str(response))
        if isinstance(response, Exception):
            raise HTTPException(500, f"generation failed for this request: {response}")
        return GenerateResponse(response=response, context_pairs=pairs)

    @serve.batch
    async def _generate_batch(
        self, rows: list[tuple[str, torch.Tensor, int]]
    ) -> list[str | Exception]:
        """Requests of different users in one `generate` call, a z and a length limit per row;
        a row that fails gets its exception back, and only that row (`generate_isolated`)."""
        prompts = [r[0] for r in rows]
        z = torch.stack([r[1] for r in rows])
        limits = [r[2] for r in rows]
        # generate is compute-bound: run it off the event loop so requests keep being accepted.
        return await asyncio.to_thread(generate_isolated, self.policy, prompts, z, limits)

    @app.post("/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest, who: Authorized) -> ScoreResponse:
        if request.user_id is not None:
            who.check_may_act_for(request.user_id)
        if self.reward is None:
            raise HTTPException(404, "scoring needs an NP-BTL reward model (config: reward)")
        self._check_size(request)
        if request.user_id is None:
            context = await asyncio.to_thread(self._context, request)
        else:
            _, context = await asyncio.to_thread(self._stored, request.user_id)
        options = await asyncio.to_thread(
            embed_responses, self.policy, request.prompt, request.responses
        )
        scores = user_rewards(self.reward, context, options)
        return ScoreResponse(scores=scores.tolist(), context_pairs=len(context.chosen))

    @app.post("/users/{user_id}/choices", response_model=UserSummary)
    async def add_choices(
        self, user_id: str, request: AddChoicesRequest, who: Authorized
    ) -> UserSummary:
        who.check_may_act_for(user_id)
        self._check_size(request)
        context = await asyncio.to_thread(self._context, request)
        try:
            state = await asyncio.to_thread(
                self.store.add_choices,
                user_id,
                context.chosen,
                context.rejected,
                request.request_id,
            )
        except KeyError:
            raise HTTPException(409, f"user {user_id!r} was deleted meanwhile") from None
        return self._summary(state)

    @app.post("/users/{user_id}/next-question", response_model=NextQuestionResponse)
    async def ask_next(
        self, user_id: str, request: NextQuestionRequest, who: Authorized
    ) -> NextQuestionResponse:
        """The pair whose answer is expected to tell most about this user (a user not stored yet
        starts from no choices); the answer goes back through POST /users/{id}/choices."""
        who.check_may_act_for(user_id)
        if self.reward is None:
            raise HTTPException(404, "choosing questions needs an NP-BTL (config: reward)")
        limit = self.config.max_question_candidates
        if request.candidates is not None and len(request.candidates) > limit:
            raise HTTPException(
                413,
                f"{len(request.candidates)} candidates: at most {limit} (max_question_candidates)",
            )
        if request.candidates is None and not self.pool:
            raise HTTPException(422, "give candidates: this endpoint has no question_pool")
        self._check_size(request)
        return await asyncio.to_thread(self._next_question, user_id, request)

    def _next_question(self, user_id: str, request: NextQuestionRequest) -> NextQuestionResponse:
        state = self.store.get(user_id)
        if state is None:  # a new user: nothing known yet
            empty = np.zeros((0, self.policy.feature_dim), np.float32)
            context = answered = ContextEmbeddings(empty, empty)
        else:
            context = self._latest(state)
            answered = ContextEmbeddings(state.chosen, state.rejected)  # beyond the latest
        if request.candidates is None:
            candidates, (a, b) = self.pool, self.pool_features
        else:
            candidates = [
                Candidate(c.prompt, c.response_a, c.response_b) for c in request.candidates
            ]
            a, b = embed_candidates(self.policy, candidates)
        try:
            index, information, selector = next_question(
                self.reward, context, a, b, request.selector, answered=answered
            )
        except ValueError as error:  # a selector this model cannot run (epig or bald on a fixed z)
            raise HTTPException(422, str(error)) from None
        if index is None:
            raise HTTPException(409, "the user has answered every candidate already")
        chosen = candidates[index]
        return NextQuestionResponse(
            index=index,
            prompt=chosen.prompt,
            response_a=chosen.response_a,
            response_b=chosen.response_b,
            information=information,
            selector=selector,
            context_pairs=len(context.chosen),
        )

    @app.get("/users/{user_id}", response_model=UserSummary)
    async def user(self, user_id: str, who: Authorized) -> UserSummary:
        who.check_may_act_for(user_id)
        state, _ = await asyncio.to_thread(self._stored, user_id)
        return self._summary(state)

    @app.delete("/users/{user_id}", status_code=204)
    async def delete_user(self, user_id: str, who: Authorized) -> None:
        """204: deleted and erased. 503: deleted, but some bytes are still in the store's log
        (retry). 404: no such user (nothing of them is stored)."""
        who.check_may_act_for(user_id)
        with self.latents_lock:
            self.latents.pop(user_id, None)
        try:
            found = await asyncio.to_thread(self.store.delete, user_id)
        except EraseIncomplete as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
        if not found:
            raise HTTPException(404, f"unknown user {user_id!r}")

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok", "device": str(self.policy.device)}

    @staticmethod
    def _summary(state) -> UserSummary:
        updated = datetime.datetime.fromtimestamp(state.updated, datetime.UTC).isoformat()
        return UserSummary(user_id=state.user_id, choices=len(state.chosen), updated=updated)


def read_question_pool(path: str, max_chars: int) -> list[Candidate]:
    """Candidate pairs from a .jsonl or .parquet file; a row without its three texts, or with a
    text longer than `max_chars`, is an error naming the file and row."""
    pool = []
    for row, record in enumerate(load_records(path, "train")):
        texts = [record.get(k) for k in ("prompt", "response_a", "response_b")]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise PreferenceDataError(
                f"{path}: row {row}: a question needs non-empty prompt, response_a and response_b"
            )
        if max(len(t) for t in texts) > max_chars:
            raise PreferenceDataError(f"{path}: row {row}: a text over {max_chars} characters")
        pool.append(Candidate(*texts))
    if not pool:
        raise PreferenceDataError(f"{path}: no candidate pairs in it")
    return pool


def build_app(config: ServeConfig):
    """The Serve application for `config`: autoscaling, replica resources and backpressure
    from it (past `max_queued_requests` waiting at a proxy, a request is a 503 with
    Retry-After at once, so memory stays bounded under any flood)."""
    return SteerableEndpoint.options(
        autoscaling_config={
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        },
        ray_actor_options={
            "num_cpus": config.cpus_per_replica,
            "num_gpus": config.gpus_per_replica,
            "resources": config.replica_resources,
            **({"accelerator_type": config.accelerator_type} if config.accelerator_type else {}),
        },
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": config.retry_after_s},
    ).bind(config.model_dump(mode="json"))


def live_replicas() -> dict[str, dict]:
    """Serve app name → its live endpoint replica: node id, pid, and how often Ray restarted
    it (one replica per app; for tests, benchmarks and operators pinning replicas)."""
    from ray.util.state import list_actors

    live = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    return {
        a.class_name.split(":")[1]: {"node": a.node_id, "pid": a.pid, "restarts": a.num_restarts}
        for a in live
        if a.class_name.endswith(":SteerableEndpoint")
    }


@contextlib.contextmanager
def running_endpoint(config: ServeConfig, name: str = "npalign") -> Iterator[str]:
    """Serve the app on config.host:config.port for the duration of the block; yields its URL.
    Joins the Ray cluster already initialised (or starts a local one)."""
    serve.start(
        proxy_location=config.proxy_location,
        http_options={
            "host": config.host,
            "port": config.port,
            "request_timeout_s": config.request_timeout_s,
        },
    )
    serve.run(build_app(config), name=name, route_prefix="/")
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        serve.shutdown()
