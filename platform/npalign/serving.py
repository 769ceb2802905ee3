"""The steerable endpoint on Ray Serve: NP-DPO generation and NP-BTL scoring for users known by
a few of their choices, behind a FastAPI ingress (OpenAPI docs at /docs).

    POST   /generate              {prompt, user_id | choices | context_embeddings, max_new_tokens?}
    POST   /score                 {prompt, responses, user_id | choices | context_embeddings}
    POST   /users/{user_id}/choices   {choices | context_embeddings}   add to a stored user
    GET    /users/{user_id}       number of choices, when updated
    DELETE /users/{user_id}       nothing of the user is kept afterwards
    GET    /health

Generation requests of *different* users are batched (`@serve.batch`), each row with its own z.
A stored user's z is cached per replica and recomputed only when their choices change (the
store's version). Users are stored as embeddings of their choices, not text (`user_store.py`).
Malformed input is a 4xx with a message; the replica keeps serving.
"""

import asyncio
import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from npalign.config import ServeConfig
from npalign.files import cache_dir
from npalign.inference import (
    Choice,
    ContextEmbeddings,
    check_reward_model,
    embed_choices,
    embed_responses,
    generate,
    user_latents,
    user_rewards,
)


class Request(BaseModel):
    # NaN or infinite embeddings would flow through z into every logit: reject them here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ChoiceIn(Request):
    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1, description="the response the user preferred")
    rejected: str = Field(min_length=1)


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
    prompt: str = Field(min_length=1)
    max_new_tokens: int | None = Field(None, gt=0)


class GenerateResponse(BaseModel):
    response: str
    context_pairs: int


class ScoreRequest(Context):
    prompt: str = Field(min_length=1)
    responses: list[str] = Field(min_length=1, max_length=64)


class ScoreResponse(BaseModel):
    scores: list[float]  # r(x, y, z) per response: higher is preferred by this user
    context_pairs: int


class AddChoicesRequest(Request):
    choices: list[ChoiceIn] | None = Field(None, min_length=1)
    context_embeddings: Embeddings | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.choices is None) == (self.context_embeddings is None):
            raise ValueError("give exactly one of choices, context_embeddings")
        return self


class UserSummary(BaseModel):
    user_id: str
    choices: int
    updated: str  # ISO 8601, UTC


def _embeddings(e: Embeddings) -> ContextEmbeddings:
    return ContextEmbeddings(np.asarray(e.chosen, np.float32), np.asarray(e.rejected, np.float32))


app = FastAPI(
    title="npalign steerable endpoint",
    description="Generation and scoring adapted to a user from a few of their choices.",
)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422, without echoing the bad input back: a NaN in it cannot be written as
    JSON, which turned a malformed request into a 500."""
    errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


@serve.deployment(
    health_check_period_s=10,
    health_check_timeout_s=30,
    max_ongoing_requests=32,
)
@serve.ingress(app)
class SteerableEndpoint:
    def __init__(self, config: dict[str, Any]):
        from npalign.models.policy import load_policy
        from npalign.models.reward import load_reward_model
        from npalign.user_store import SQLiteUserStore

        self.config = ServeConfig.model_validate(config)
        torch.set_num_threads(self.config.threads_per_replica)
        self.policy = load_policy(Path(self.config.policy))
        self.reward = load_reward_model(self.config.reward) if self.config.reward else None
        if self.reward is not None:
            check_reward_model(self.reward, self.policy.feature_dim, self.config.reward)
        self.store = SQLiteUserStore(self.config.store or cache_dir("users.db"))
        self.latents: dict[str, tuple[int, torch.Tensor]] = {}  # user → (store version, z)
        batch = self._generate_batch
        batch.set_max_batch_size(self.config.max_batch_size)
        batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    def check_health(self) -> None:
        self.store.get("")  # the store answers (raises, so Serve restarts the replica, if not)

    # --- contexts → z ----------------------------------------------------------------------

    def _context(self, request: Context | AddChoicesRequest) -> ContextEmbeddings:
        if request.context_embeddings is not None:
            context = _embeddings(request.context_embeddings)
        else:
            choices = [Choice(c.prompt, c.chosen, c.rejected) for c in request.choices]
            context = embed_choices(self.policy, [choices])[0]
        if len(context.chosen) > self.config.max_context_pairs:
            raise HTTPException(
                413,
                f"{len(context.chosen)} context pairs: at most "
                f"{self.config.max_context_pairs} (max_context_pairs)",
            )
        if context.chosen.shape[1] != self.policy.feature_dim:
            raise HTTPException(
                422,
                f"context embeddings have dimension {context.chosen.shape[1]}; this model "
                f"expects {self.policy.feature_dim}",
            )
        return context

    def _stored(self, user_id: str):
        state = self.store.get(user_id)
        if state is None:
            raise HTTPException(404, f"unknown user {user_id!r}: add choices first")
        keep = self.config.max_context_pairs  # the most recent choices
        return state, ContextEmbeddings(state.chosen[-keep:], state.rejected[-keep:])

    def _latent(self, request: Context) -> tuple[torch.Tensor, int]:
        """(z of shape (latent,), number of context pairs) for the policy."""
        if request.user_id is None:
            context = self._context(request)
            return user_latents(self.policy, [context])[0], len(context.chosen)
        state, context = self._stored(request.user_id)
        cached = self.latents.get(request.user_id)
        if cached is None or cached[0] != state.version:
            cached = (state.version, user_latents(self.policy, [context])[0])
            self.latents[request.user_id] = cached
        return cached[1], len(context.chosen)

    # --- endpoints -------------------------------------------------------------------------

    @app.post("/generate", response_model=GenerateResponse)
    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        new_tokens = request.max_new_tokens or self.config.default_new_tokens
        if new_tokens > self.config.max_new_tokens:
            raise HTTPException(
                422,
                f"max_new_tokens {new_tokens} is over this endpoint's limit of "
                f"{self.config.max_new_tokens}",
            )
        prompt_tokens = len(self.policy.tokenizer(request.prompt)["input_ids"])
        if prompt_tokens > self.config.max_prompt_tokens:
            raise HTTPException(
                413, f"prompt has {prompt_tokens} tokens: at most {self.config.max_prompt_tokens}"
            )
        z, pairs = self._latent(request)
        response = await self._generate_batch((request.prompt, z, new_tokens))
        return GenerateResponse(response=response, context_pairs=pairs)

    @serve.batch
    async def _generate_batch(self, rows: list[tuple[str, torch.Tensor, int]]) -> list[str]:
        """Requests of different users in one `generate` call, a z and a length limit per row."""
        prompts = [r[0] for r in rows]
        z = torch.stack([r[1] for r in rows])
        limits = [r[2] for r in rows]
        # generate is compute-bound: run it off the event loop so requests keep being accepted.
        return await asyncio.to_thread(generate, self.policy, prompts, z, limits)

    @app.post("/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest) -> ScoreResponse:
        if self.reward is None:
            raise HTTPException(404, "scoring needs an NP-BTL reward model (config: reward)")
        if request.user_id is None:
            context = self._context(request)
        else:
            _, context = self._stored(request.user_id)
        options = embed_responses(self.policy, request.prompt, request.responses)
        scores = user_rewards(self.reward, context, options)
        return ScoreResponse(scores=scores.tolist(), context_pairs=len(context.chosen))

    @app.post("/users/{user_id}/choices", response_model=UserSummary)
    async def add_choices(self, user_id: str, request: AddChoicesRequest) -> UserSummary:
        context = self._context(request)
        state = self.store.add_choices(user_id, context.chosen, context.rejected)
        return self._summary(state)

    @app.get("/users/{user_id}", response_model=UserSummary)
    async def user(self, user_id: str) -> UserSummary:
        state, _ = self._stored(user_id)
        return self._summary(state)

    @app.delete("/users/{user_id}", status_code=204)
    async def delete_user(self, user_id: str) -> None:
        self.latents.pop(user_id, None)
        if not self.store.delete(user_id):
            raise HTTPException(404, f"unknown user {user_id!r}")

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @staticmethod
    def _summary(state) -> UserSummary:
        updated = datetime.datetime.fromtimestamp(state.updated, datetime.UTC).isoformat()
        return UserSummary(user_id=state.user_id, choices=len(state.chosen), updated=updated)


def build_app(config: ServeConfig):
    """The Serve application for `config` (autoscaling and replica resources from it)."""
    return SteerableEndpoint.options(
        autoscaling_config={
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        },
        ray_actor_options={"num_cpus": config.cpus_per_replica},
    ).bind(config.model_dump(mode="json"))


@contextlib.contextmanager
def running_endpoint(config: ServeConfig, name: str = "npalign") -> Iterator[str]:
    """Serve the app on config.host:config.port for the duration of the block; yields its URL.
    Joins the Ray cluster already initialised (or starts a local one)."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=name, route_prefix="/")
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        serve.shutdown()
