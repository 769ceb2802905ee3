"""The steerable endpoint through a real local Ray Serve instance (one for this module), with a
one-block SmolLM2 policy and an untrained NP-BTL: these tests check the service, not quality."""

import json
import math
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.ray

CHOICES = [
    {"prompt": "What happened?", "chosen": "A fire.", "rejected": "A big fire broke out today."},
    {"prompt": "Any news?", "chosen": "Rain.", "rejected": "Heavy rain fell across the state."},
]

SHORT = {"chosen": [[1.0]], "rejected": [[0.0]]}  # 1 feature, the model expects 384
RAGGED = {"chosen": [[1.0], [1.0, 2.0]], "rejected": [[0.0]]}
# NaN is not JSON (requests refuses to send it): the raw text json.dumps writes for it. The
# right width (384), so only the NaN is wrong.
NAN = json.dumps(
    {
        "prompt": "Hi",
        "context_embeddings": {"chosen": [[math.nan] * 384], "rejected": [[0.0] * 384]},
    }
)
# Finite as a JSON float, infinite as float32.
OVERFLOW = {"chosen": [[1e39] * 384], "rejected": [[0.0] * 384]}
WIDE = {"chosen": [[0.0] * 1000], "rejected": [[0.0] * 1000]}
MANY = CHOICES * 500  # 1,000 pairs: refused before any is embedded
QUESTIONS = [
    {"prompt": c["prompt"], "response_a": c["chosen"], "response_b": c["rejected"]} for c in CHOICES
]
# Under max_prompt_tokens (64) as raw text, over it inside the chat template.
TEMPLATE_OVERFLOW = "word " * 50
ADMIN = "admin-token-for-tests-0001"
GINA = "gina-token-for-tests-0001"  # may act for user "gina" only
http = requests.Session()  # what the tests send is sent as the admin, unless they say otherwise
http.headers["Authorization"] = f"Bearer {ADMIN}"


def tiny_checkpoints(folder: Path) -> tuple[str, str]:
    """An untrained one-block SmolLM2 policy and NP-BTL reward model: (policy, reward)."""
    import torch

    from npalign.config import EmbedConfig, ModelConfig, PolicyConfig
    from npalign.models.policy import build_policy, save_policy
    from npalign.models.reward import build_reward_model, save_reward_model

    config = PolicyConfig(num_layers=1, lora_rank=4, hidden_dim=16, latent_dim=8)
    policy, _ = build_policy(config, feature_dim=384)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(folder / "policy", config, EmbedConfig(), 384, True, state)
    torch.manual_seed(0)
    model = ModelConfig(hidden_dim=16, latent_dim=8)
    reward = build_reward_model("npbtl", model, 384)
    save_reward_model(folder / "reward", "npbtl", model, 384, reward.state_dict())
    return str(folder / "policy"), str(folder / "reward")


@pytest.fixture(scope="module")
def endpoint(ray_cluster, tmp_path_factory):
    from npalign.config import ServeConfig
    from npalign.serving import running_endpoint

    folder = tmp_path_factory.mktemp("serve")
    policy, reward = tiny_checkpoints(folder)
    settings = ServeConfig(
        policy=policy,
        reward=reward,
        store=str(folder / "users.db"),
        port=8123,
        max_context_pairs=4,
        max_new_tokens=8,
        default_new_tokens=4,
        max_prompt_tokens=64,
        min_replicas=1,
        max_replicas=1,
        cpus_per_replica=0.5,
        admin_token=ADMIN,
        user_tokens={"gina": GINA},
        max_ongoing_requests=8,
        max_queued_requests=8,
        max_body_bytes=100_000,
        request_timeout_s=90,
    )
    with running_endpoint(settings) as url:
        yield url, settings


def post(url, path, body, timeout=120):
    return http.post(url + path, json=body, timeout=timeout)


def test_generate_for_a_user_given_their_context(endpoint):
    url, _ = endpoint
    reply = post(url, "/generate", {"prompt": "What happened today?", "choices": CHOICES})
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["response"], str) and reply.json()["context_pairs"] == 2
    embedded = {"chosen": [[0.1] * 384], "rejected": [[0.0] * 384]}
    reply = post(url, "/generate", {"prompt": "Hi?", "context_embeddings": embedded})
    assert reply.status_code == 200, reply.text
    scores = post(url, "/score", {"prompt": "Q?", "responses": ["a", "b c"], "choices": CHOICES})
    assert scores.status_code == 200 and len(scores.json()["scores"]) == 2


def test_add_choices_then_generate_by_user_id_and_delete(endpoint):
    url, settings = endpoint
    added = post(url, "/users/erin/choices", {"choices": CHOICES[:1]})
    assert added.status_code == 200 and added.json()["choices"] == 1
    added = post(url, "/users/erin/choices", {"choices": CHOICES[1:]})
    assert added.json()["choices"] == 2
    assert http.get(url + "/users/erin", timeout=30).json()["choices"] == 2
    reply = post(url, "/generate", {"prompt": "What happened today?", "user_id": "erin"})
    assert reply.status_code == 200 and reply.json()["context_pairs"] == 2

    assert http.delete(url + "/users/erin", timeout=30).status_code == 204
    assert http.get(url + "/users/erin", timeout=30).status_code == 404
    from npalign.stores.sqlite import SQLiteUserStore

    assert SQLiteUserStore(settings.store).get("erin") is None
    files = b"".join(p.read_bytes() for p in Path(settings.store).parent.glob("users.db*"))
    assert b"erin" not in files


def test_a_new_user_is_asked_questions_not_answered_yet(endpoint):
    url, _ = endpoint
    asked = []
    for _ in QUESTIONS:
        reply = post(url, "/users/quinn/next-question", {"candidates": QUESTIONS})
        assert reply.status_code == 200, reply.text
        question = reply.json()
        assert question["selector"] == "lookahead"  # the test's NP-BTL has a fixed z
        assert question["index"] not in asked and question["context_pairs"] == len(asked)
        asked.append(question["index"])
        answer = {
            "prompt": question["prompt"],
            "chosen": question["response_b"],
            "rejected": question["response_a"],
        }
        assert post(url, "/users/quinn/choices", {"choices": [answer]}).status_code == 200
    reply = post(url, "/users/quinn/next-question", {"candidates": QUESTIONS})
    assert reply.status_code == 409, reply.text  # every candidate is answered


def test_the_demo_asks_a_new_user_questions_then_everyone_in_one_go(endpoint):
    from test_job import load_job

    demo = load_job("demo")

    url, _ = endpoint
    asked = demo.ask_questions(url, "new-demo", QUESTIONS, [1, 0], 2, token=ADMIN)
    assert sorted(q["index"] for q in asked) == [0, 1]
    assert [q["answer"] for q in sorted(asked, key=lambda q: q["index"])] == ["b", "a"]
    users = {"concise-demo": CHOICES, "detailed-demo": CHOICES[::-1]}
    prompt = "What happened today?"
    answers = demo.ask_endpoint(url, prompt, users, new_tokens=4, token=ADMIN, known=("new-demo",))
    assert set(answers) == {*users, "new-demo"}
    assert all(isinstance(a, str) for a in answers.values())
    for user in [*users, "new-demo"]:  # stored by the demo, as a served user would be
        assert http.get(f"{url}/users/{user}", timeout=30).json()["choices"] == 2


def test_a_replica_restart_keeps_the_user(endpoint):
    import ray

    url, _ = endpoint
    assert post(url, "/users/frank/choices", {"choices": CHOICES}).status_code == 200
    named = ray.util.list_named_actors(all_namespaces=True)
    replicas = [a for a in named if "SteerableEndpoint" in a["name"]]
    assert replicas
    for actor in replicas:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            reply = http.get(url + "/users/frank", timeout=30)
            if reply.status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):  # the replica is still starting
            pass
        time.sleep(1)
    assert reply.status_code == 200 and reply.json()["choices"] == 2


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/generate", "{not json", 422),
        ("/generate", {"prompt": 3, "choices": CHOICES}, 422),
        ("/generate", {"prompt": "Hi", "choices": "many"}, 422),
        ("/generate", {"prompt": "Hi", "user_id": "nobody"}, 404),
        ("/generate", {"prompt": "Hi", "choices": []}, 422),
        ("/generate", {"prompt": "Hi"}, 422),
        ("/generate", {"prompt": "Hi", "user_id": "x", "choices": CHOICES}, 422),
        ("/generate", {"prompt": "", "choices": CHOICES}, 422),
        ("/generate", {"prompt": "Hi", "choices": CHOICES * 3}, 413),
        ("/generate", {"prompt": "word " * 200, "choices": CHOICES}, 413),
        ("/generate", {"prompt": "Hi", "choices": CHOICES, "max_new_tokens": 10_000}, 422),
        ("/generate", {"prompt": "Hi", "choices": CHOICES, "temperature": 2}, 422),
        ("/generate", {"prompt": "Hi", "context_embeddings": SHORT}, 422),
        ("/generate", {"prompt": "Hi", "context_embeddings": RAGGED}, 422),
        ("/generate", NAN, 422),
        ("/score", {"prompt": "Hi", "responses": [], "choices": CHOICES}, 422),
        ("/users/gina/choices", {"choices": []}, 422),
        ("/users/gina/choices", {}, 422),
        ("/generate", {"prompt": "   ", "choices": CHOICES}, 422),
        ("/generate", {"prompt": "Hi", "choices": [{**CHOICES[0], "chosen": " \n"}]}, 422),
        ("/generate", {"prompt": TEMPLATE_OVERFLOW, "choices": CHOICES}, 413),
        ("/generate", {"prompt": "Hi", "context_embeddings": OVERFLOW}, 422),
        ("/generate", {"prompt": "Hi", "context_embeddings": WIDE}, 422),
        ("/generate", {"prompt": "Hi", "choices": MANY}, 413),
        ("/generate", {"prompt": "x" * 9_000, "choices": CHOICES}, 413),
        ("/score", {"prompt": "Hi", "responses": ["y" * 9_000], "choices": CHOICES}, 413),
        ("/users/gina/choices", {"choices": MANY}, 413),
        ("/users/gina/choices", {"context_embeddings": OVERFLOW}, 422),
        ("/generate", "x" * 10_000_000, 413),
        ("/users/gina/next-question", {}, 422),  # no candidates and no configured pool
        ("/users/gina/next-question", {"candidates": []}, 422),
        ("/users/gina/next-question", {"candidates": QUESTIONS, "selector": "psychic"}, 422),
        ("/users/gina/next-question", {"candidates": QUESTIONS, "selector": "bald"}, 422),
        ("/users/gina/next-question", {"candidates": [{**QUESTIONS[0], "prompt": " "}]}, 422),
        # 1,001 short candidates (52 kB, under max_body_bytes): over max_question_candidates.
        (
            "/users/gina/next-question",
            {"candidates": [{"prompt": "Q", "response_a": "a", "response_b": "b"}] * 1001},
            413,
        ),
        # Over this endpoint's max_body_bytes (100 kB), under the default: the setting holds.
        ("/generate", {"prompt": "Hi", "choices": CHOICES, "pad": "x" * 150_000}, 413),
    ],
)
def test_malformed_requests_get_a_4xx_and_the_replica_keeps_serving(endpoint, path, body, status):
    url, _ = endpoint
    if isinstance(body, str):
        headers = {"content-type": "application/json"}
        reply = http.post(url + path, data=body, headers=headers, timeout=60)
    else:
        reply = post(url, path, body)
    assert reply.status_code == status, reply.text
    assert reply.json()["detail"]  # a message saying what is wrong
    assert http.get(url + "/health", timeout=30).status_code == 200


def test_bad_requests_in_a_busy_batch_fail_alone(endpoint):
    """Bad requests sent among good ones, all at once (the replica batches up to 8): each bad
    one gets its 4xx and every good one its answer."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = endpoint
    good = {"prompt": "What happened?", "choices": CHOICES, "max_new_tokens": 4}
    bad = [
        {**good, "prompt": "   "},
        {**good, "prompt": TEMPLATE_OVERFLOW},
        {**good, "context_embeddings": OVERFLOW, "choices": None},
    ]
    bodies = [good] * 6 + bad
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: post(url, "/generate", body), bodies))
    assert [r.status_code for r in replies[:6]] == [200] * 6
    assert all(400 <= r.status_code < 500 for r in replies[6:]), [r.text for r in replies[6:]]


def test_a_retried_post_adds_nothing_and_a_user_created_again_starts_afresh(endpoint):
    url, _ = endpoint
    body = {"choices": CHOICES, "request_id": "post-1"}
    assert post(url, "/users/kim/choices", body).json()["choices"] == 2
    assert post(url, "/users/kim/choices", body).json()["choices"] == 2  # the retry
    assert post(url, "/generate", {"prompt": "Hi", "user_id": "kim"}).status_code == 200
    assert http.delete(url + "/users/kim", timeout=30).status_code == 204
    again = post(url, "/users/kim/choices", {"choices": CHOICES[:1], "request_id": "post-1"})
    assert again.json()["choices"] == 1  # a new user: the old request id is gone with the old one
    reply = post(url, "/generate", {"prompt": "Hi", "user_id": "kim"})
    assert reply.status_code == 200 and reply.json()["context_pairs"] == 1


def test_tokens_scope_each_client_and_the_host_is_checked(endpoint):
    url, _ = endpoint
    anonymous = {"prompt": "Hi", "user_id": "gina"}
    assert requests.post(url + "/generate", json=anonymous, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-a-token-of-this-endpoint"}
    assert requests.get(url + "/users/gina", headers=wrong, timeout=30).status_code == 401
    health = requests.get(url + "/health", timeout=30)  # no token needed
    assert health.status_code == 200 and health.json() == {"status": "ok", "device": "cpu"}

    gina = requests.Session()
    gina.headers["Authorization"] = f"Bearer {GINA}"
    assert gina.post(f"{url}/users/gina/choices", json={"choices": CHOICES}).status_code == 200
    assert gina.post(f"{url}/generate", json={**anonymous, "max_new_tokens": 2}).ok
    assert http.post(f"{url}/users/hugo/choices", json={"choices": CHOICES}).ok
    # gina's token reaches no other user: not to read, steer, score or delete them.
    assert gina.get(f"{url}/users/hugo").status_code == 403
    assert gina.post(f"{url}/users/hugo/choices", json={"choices": CHOICES}).status_code == 403
    assert gina.post(f"{url}/generate", json={"prompt": "Hi", "user_id": "hugo"}).status_code == 403
    score = {"prompt": "Hi", "responses": ["a"], "user_id": "hugo"}
    assert gina.post(f"{url}/score", json=score).status_code == 403
    assert gina.delete(f"{url}/users/hugo").status_code == 403
    assert http.get(f"{url}/users/hugo").json()["choices"] == 2  # untouched
    # Its own context in the request is its own business.
    inline = {"prompt": "Hi", "choices": CHOICES, "max_new_tokens": 2}
    assert gina.post(f"{url}/generate", json=inline).status_code == 200

    # A page served from another name (DNS rebinding) cannot reach the loopback endpoint.
    foreign = http.get(f"{url}/users/hugo", headers={"Host": "attacker.example:8123"})
    assert foreign.status_code == 400


def test_a_flood_past_capacity_gets_503_with_retry_after_and_good_requests_still_served(
    endpoint,
):
    """8 requests at work and 8 waiting are what the test endpoint holds: the rest of a flood
    of 80 is refused at once with a Retry-After, and nothing fails in another way."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = endpoint
    body = {"prompt": "What happened?", "choices": CHOICES, "max_new_tokens": 8}
    with ThreadPoolExecutor(80) as pool:
        replies = list(pool.map(lambda _: post(url, "/generate", body), range(80)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 8, codes
    assert all(r.headers.get("Retry-After") == "1" for r in replies if r.status_code == 503)
    assert post(url, "/generate", body).status_code == 200  # and it recovers at once


def test_the_request_timeout_reaches_serve(endpoint):
    from ray.serve.context import _get_global_client

    _, settings = endpoint
    assert _get_global_client().http_config.request_timeout_s == settings.request_timeout_s
