"""The NP-DPO policy on a tiny random Llama: FiLM identity at init, π_ref = the base model, a z per
batch row, masked sequence log-probs and the DPO loss against hand computations."""

import json
import math

import numpy as np
import pytest
import torch

from npalign.models.context import ContextEncoder
from npalign.models.policy import (
    FiLM,
    PolicyOutput,
    SteerablePolicy,
    apo_zero_loss,
    log_ratios,
    preference_metrics,
    sequence_logprobs,
    sigmoid_loss,
)

LATENT = 8


def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def policy_and_base():
    lm = tiny_lm()
    ids = torch.randint(3, 64, (2, 10))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base = lm(input_ids=ids, attention_mask=mask).logits.clone()
    policy = SteerablePolicy(lm, ContextEncoder(16, 32, LATENT), LATENT).eval()
    return policy, base, ids, mask


def perturb(policy):
    """Move LoRA and FiLM away from their identity initialisation, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_" in name or name.startswith("film."):
                p.add_(torch.randn_like(p) * 0.5)


def test_film_and_lora_are_the_identity_at_init(policy_and_base):
    policy, base, ids, mask = policy_and_base
    z = torch.randn(2, LATENT)
    with torch.no_grad():
        assert torch.equal(policy.logits(ids, mask, z), base)


def test_reference_is_the_base_model_after_training(policy_and_base):
    policy, base, ids, mask = policy_and_base
    perturb(policy)
    z = torch.randn(2, LATENT)
    with torch.no_grad():
        assert not torch.allclose(policy.logits(ids, mask, z), base)
        with policy.reference():
            assert torch.equal(policy.logits(ids, mask, z), base)
        # only the adapters are trainable besides FiLM and the encoder: the base stays frozen
    trainable = {n.split(".")[0] for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {"lm", "encoder", "film"}
    assert all("lora_" in n for n, p in policy.lm.named_parameters() if p.requires_grad)


def test_each_row_is_conditioned_on_its_own_z(policy_and_base):
    policy, _, ids, mask = policy_and_base
    perturb(policy)
    z = torch.randn(2, LATENT)
    other = z.clone()
    other[1] = torch.randn(LATENT)
    with torch.no_grad():
        before, after = policy.logits(ids, mask, z), policy.logits(ids, mask, other)
    assert torch.equal(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


def test_no_context_is_the_pooled_policy_however_film_is_trained(policy_and_base):
    policy, _, ids, mask = policy_and_base
    perturb(policy)
    empty = torch.randn(2, 3, 16)  # padding only: the mask hides every pair
    z = policy.latent(empty, empty, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(z, torch.zeros_like(z))
    pair = torch.randn(2, 1, 16)
    one = policy.latent(pair, -pair, torch.ones(2, 1, dtype=torch.bool))
    with torch.no_grad():
        pooled = policy.logits(ids, mask, None)  # base + LoRA, FiLM skipped
        assert torch.equal(policy.logits(ids, mask, z), pooled)
        assert not torch.allclose(policy.logits(ids, mask, one), pooled)


def test_generation_with_a_z_per_row_matches_generating_each_row_alone(policy_and_base):
    policy, _, ids, mask = policy_and_base
    perturb(policy)
    z = torch.randn(2, LATENT) * 3
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        both = policy.generate(ids, mask, z, **kw)
        alone = [
            policy.generate(ids[i : i + 1], mask[i : i + 1], z[i : i + 1], **kw) for i in (0, 1)
        ]
    assert torch.equal(both[0], alone[0][0]) and torch.equal(both[1], alone[1][0])


def test_film_scales_and_shifts_per_row():
    film = FiLM(2, 3)
    h = torch.randn(2, 4, 3)
    z = torch.randn(2, 2)
    assert torch.equal(film(h, z), h)
    with torch.no_grad():
        film.gamma.weight.fill_(1.0)
    out = film(h, z)
    expected = (1 + z.sum(-1))[:, None, None] * h
    torch.testing.assert_close(out, expected)


def test_sequence_logprob_sums_response_tokens_only():
    vocab = 4
    logits = torch.randn(1, 5, vocab)
    ids = torch.tensor([[2, 3, 1, 0, 0]])  # prompt "2", response "3 1", then padding
    response = torch.tensor([[0, 1, 1, 0, 0]])
    logp = torch.log_softmax(logits, -1)
    by_hand = logp[0, 0, 3] + logp[0, 1, 1]  # token t is predicted at position t − 1
    torch.testing.assert_close(sequence_logprobs(logits, ids, response), by_hand[None])


def test_dpo_loss_by_hand():
    output = PolicyOutput(
        logprobs=torch.tensor([[[-10.0, -12.0]]]),
        reference=torch.tensor([[[-11.0, -11.5]]]),
        lengths=torch.tensor([[[4, 6]]]),
    )
    chosen, rejected = log_ratios(output)
    assert (chosen.item(), rejected.item()) == (1.0, -0.5)
    loss = sigmoid_loss(chosen, rejected, beta=0.05)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.05 * 1.5)))
    assert preference_metrics(output, beta=0.05)[1]["accuracy"].item() == 1.0


def test_sft_term_adds_the_chosen_per_token_nll():
    # One episode, one target: chosen log-prob −10 over 4 tokens, rejected −12 over 6.
    output = PolicyOutput(
        logprobs=torch.tensor([[[-10.0, -12.0]]]),
        reference=torch.tensor([[[-11.0, -11.5]]]),
        lengths=torch.tensor([[[4, 6]]]),
    )
    dpo = math.log(1 + math.exp(-0.075))
    loss, metrics = preference_metrics(output, beta=0.05, sft_weight=0.5)
    assert loss.item() == pytest.approx(dpo + 0.5 * 10 / 4)
    assert metrics["nll"].item() == pytest.approx(dpo)  # validation compares the DPO part only
    assert metrics["sft_nll"].item() == pytest.approx(2.5)
    assert preference_metrics(output, beta=0.05)[0].item() == pytest.approx(dpo)


def test_apo_zero_by_hand_moves_each_answer_on_its_own():
    # Chosen log-ratio +1, rejected −0.5: APO-zero = 1 − σ(β·1) + σ(β·(−0.5)).
    output = PolicyOutput(
        logprobs=torch.tensor([[[-10.0, -12.0]]], requires_grad=True),
        reference=torch.tensor([[[-11.0, -11.5]]]),
        lengths=torch.tensor([[[4, 6]]]),
    )
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    loss, metrics = preference_metrics(output, beta=0.5, loss="apo_zero")
    assert loss.item() == pytest.approx(1 - sigmoid(0.5) + sigmoid(-0.25))
    assert metrics["nll"].item() == pytest.approx(math.log(1 + math.exp(-0.75)))  # still DPO's
    loss.backward()
    chosen_grad, rejected_grad = output.logprobs.grad[0, 0].tolist()
    # DPO's two gradients are equal and opposite; APO-zero's are not: each has its own σ'.
    assert chosen_grad == pytest.approx(-0.5 * sigmoid(0.5) * (1 - sigmoid(0.5)))
    assert rejected_grad == pytest.approx(0.5 * sigmoid(-0.25) * (1 - sigmoid(-0.25)))


def test_per_token_ratios_gain_nothing_from_degrading_every_token():
    # A short chosen answer (4 tokens) and a long rejected one (12), both at π_ref; then every
    # token made 0.5 nats less likely.
    reference = torch.tensor([[[-8.0, -24.0]]])
    lengths = torch.tensor([[[4, 12]]])
    at_reference = PolicyOutput(reference.clone(), reference, lengths)
    degraded = PolicyOutput(reference - 0.5 * lengths, reference, lengths)
    for loss in ("sigmoid", "apo_zero"):
        same = [
            preference_metrics(o, 2.0, loss=loss, per_token=True)[0]
            for o in (at_reference, degraded)
        ]
        summed = [preference_metrics(o, 0.1, loss=loss)[0] for o in (at_reference, degraded)]
        assert same[1].item() == pytest.approx(same[0].item())
        assert summed[1].item() < summed[0].item()  # summed, degrading looks like preferring short
    # by hand: chosen −1 over 4 tokens, rejected +3 over 12: per token −0.25 and +0.25
    output = PolicyOutput(torch.tensor([[[-9.0, -21.0]]]), reference, lengths)
    loss, metrics = preference_metrics(output, 2.0, per_token=True)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(2.0 * 0.5)))
    assert metrics["accuracy"].item() == 0.0


def test_an_unknown_preference_loss_is_refused_with_the_registered_ones():
    from npalign.config import PolicyConfig

    with pytest.raises(ValueError, match="registered are sigmoid, apo_zero"):
        PolicyConfig(loss="ipo")


def test_episodes_without_context_train_dpo_whatever_the_loss():
    # Two episodes of two target pairs each, all log-probs different: the first episode has a
    # context, the second none.
    logprobs = torch.tensor([[[-10.0, -12.0], [-9.0, -13.0]], [[-8.0, -7.0], [-11.0, -10.5]]])
    reference = torch.full_like(logprobs, -10.0)
    lengths = torch.full(logprobs.shape, 5)
    ratios = (logprobs - reference).unbind(-1)
    expected = torch.stack([apo_zero_loss(*ratios, 0.5)[0], sigmoid_loss(*ratios, 0.5)[1]]).mean()
    output = PolicyOutput(logprobs, reference, lengths)
    mixed = preference_metrics(output, 0.5, loss="apo_zero", with_context=torch.tensor([1, 0]) > 0)
    torch.testing.assert_close(mixed[0], expected)


def test_left_padding_and_kept_logits_change_nothing(policy_and_base):
    policy, _, ids, _ = policy_and_base
    perturb(policy)
    z = torch.randn(1, LATENT)
    alone = ids[:1, :6]
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), alone], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        full = policy.logits(alone, torch.ones_like(alone), z)
        kept = policy.logits(padded, mask, z, keep=3)
    torch.testing.assert_close(kept, full[:, -3:], atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_restores_generation_exactly(tmp_path):
    from npalign.config import EmbedConfig, PolicyConfig
    from npalign.data.sequences import prompt_tokens
    from npalign.models.policy import build_policy, load_policy, save_policy, trainable_state

    config = PolicyConfig(num_layers=1, lora_rank=4, hidden_dim=16, latent_dim=LATENT)
    policy, tokenizer = build_policy(config, feature_dim=16)
    perturb(policy)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(tmp_path, config, EmbedConfig(), 16, True, state)
    checkpoint = load_policy(tmp_path)
    loaded = checkpoint.policy
    assert checkpoint.use_latent and trainable_state(loaded) == set(state)

    ids = torch.tensor([prompt_tokens(tokenizer, "Tell me about the fire.")] * 2)
    mask = torch.ones_like(ids)
    z = torch.randn(2, LATENT) * 3
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        before = policy.eval().generate(ids, mask, z, **kw)
        after = loaded.generate(ids, mask, z, **kw)
    assert torch.equal(before, after)
    assert not torch.equal(before[0], before[1])  # the two rows' z steer them apart

    # strict: a checkpoint missing a tensor (here the context encoder) is refused
    del state[next(n for n in state if n.startswith("encoder."))]
    save_policy(tmp_path, config, EmbedConfig(), 16, True, state)
    with pytest.raises(ValueError, match="missing"):
        load_policy(tmp_path)


def test_a_checkpoint_loads_after_it_moves_and_its_np_btl_run_is_deleted(tmp_path):
    import shutil

    from npalign.config import EmbedConfig, ModelConfig, PolicyConfig
    from npalign.models.policy import build_policy, load_policy, save_policy
    from npalign.models.reward import build_reward_model, save_reward_model

    model = ModelConfig(hidden_dim=16, latent_dim=LATENT)
    torch.manual_seed(3)
    reward = build_reward_model("npbtl", model, 16)
    save_reward_model(tmp_path / "npbtl", "npbtl", model, 16, reward.state_dict())
    config = PolicyConfig(
        num_layers=1,
        lora_rank=4,
        hidden_dim=16,
        latent_dim=LATENT,
        encoder_init=str(tmp_path / "npbtl"),
    )
    policy, _ = build_policy(config, feature_dim=16)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(tmp_path / "run" / "policy", config, EmbedConfig(), 16, True, state)

    shutil.move(tmp_path / "run", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "npbtl")
    loaded = load_policy(tmp_path / "elsewhere" / "policy").policy
    for name, tensor in loaded.encoder.state_dict().items():
        torch.testing.assert_close(tensor, reward.context_encoder.state_dict()[name])

    # one saved before z's centre was measured: a training-only centring weight, no centre
    spec_path = tmp_path / "elsewhere" / "policy" / "policy.json"
    spec = json.loads(spec_path.read_text())
    spec["policy"]["centring"] = 1.0
    del spec["policy"]["latent_centre"]
    spec_path.write_text(json.dumps(spec))
    assert load_policy(tmp_path / "elsewhere" / "policy").policy.latent_centre is None


@pytest.fixture(scope="module")
def smol_checkpoint_folder(tmp_path_factory):
    """SmolLM2 cut to one block, LoRA and FiLM perturbed, saved."""
    from npalign.config import EmbedConfig, PolicyConfig
    from npalign.models.policy import build_policy, save_policy

    folder = tmp_path_factory.mktemp("policy")
    config = PolicyConfig(
        num_layers=1,
        lora_rank=4,
        hidden_dim=16,
        latent_dim=LATENT,
        latent_scale=2.5,
        latent_centre=[0.25] * LATENT,
    )
    policy, _ = build_policy(config, feature_dim=384)
    perturb(policy)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_policy(folder, config, EmbedConfig(), 384, True, state)
    return folder


@pytest.fixture(scope="module")
def smol_checkpoint(smol_checkpoint_folder):
    """That checkpoint loaded back."""
    from npalign.models.policy import load_policy

    return load_policy(smol_checkpoint_folder)


def test_generate_for_users_given_their_choices(smol_checkpoint):
    from npalign.inference import Choice, embed_choices, generate, user_latents

    concise = [Choice("What happened?", "A fire.", "A large fire broke out near the town today.")]
    contexts = embed_choices(smol_checkpoint, [concise, []])
    z = user_latents(smol_checkpoint, contexts)
    assert z.shape == (2, LATENT)
    prompts = ["What happened in this news story? A fire.", "Tell me about the weather, please."]
    both = generate(smol_checkpoint, prompts, z, max_new_tokens=6)
    # prompts of different lengths are left-padded: batching changes no row's answer
    alone = [
        generate(smol_checkpoint, [p], z[i : i + 1], max_new_tokens=6)[0]
        for i, p in enumerate(prompts)
    ]
    assert both == alone
    # a limit per row (requests batched by a server): each row as if generated alone
    mixed = generate(smol_checkpoint, prompts, z, max_new_tokens=[2, 6])
    assert mixed == [generate(smol_checkpoint, prompts[:1], z[:1], max_new_tokens=2)[0], alone[1]]


def test_loop_guards_count_the_answer_only():
    import torch

    from npalign.config import DecodingConfig
    from npalign.inference import answer_guards

    words = torch.tensor([True] * 8 + [False, True])  # token 8 holds no letter (a digit)
    only = {"no_repeat_ngram_size": 0, "max_word_run": 0}
    (ngrams,) = answer_guards(
        DecodingConfig(**{**only, "no_repeat_ngram_size": 2}), prompt_width=3, words=lambda: words
    )
    # the answer so far is 8 9 8: a 9 would say the bigram (8, 9) twice
    out = ngrams(torch.tensor([[5, 6, 7, 8, 9, 8]]), torch.zeros(1, 10))
    assert out[0, 9] == -torch.inf and torch.isfinite(out[0, :9]).all()
    # the answer so far is 5, and (5, 6) is a bigram of the prompt only: HF's guard bans 6
    out = ngrams(torch.tensor([[5, 6, 7, 5]]), torch.zeros(1, 10))
    assert torch.isfinite(out).all()
    (penalty,) = answer_guards(
        DecodingConfig(**{**only, "repetition_penalty": 2.0}), prompt_width=3, words=lambda: words
    )
    out = penalty(torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 10))
    assert out[0, 8] == 0.5 and out[0, 5] == 1.0  # 8 is in the answer, 5 in the prompt only
    (run,) = answer_guards(DecodingConfig(**{**only, "max_word_run": 2}), 3, lambda: words)
    # rows' answers: 9 9 (a third 9 is banned), 8 8 (a digit: not banned), 9 (once), and
    # 7 after the prompt's 7 7 (the prompt does not count)
    ids = torch.tensor([[1, 2, 3, 9, 9], [1, 2, 3, 8, 8], [1, 2, 3, 4, 9], [1, 7, 7, 0, 7]])
    out = run(ids, torch.zeros(4, 10))
    assert out[0, 9] == -torch.inf and (out.isinf().sum(1) == torch.tensor([1, 0, 0, 0])).all()
    assert answer_guards(DecodingConfig(**only), 3, words=pytest.fail) == []  # never asked


def test_word_tokens_are_those_that_hold_a_letter(smol_checkpoint):
    tokenizer, words = smol_checkpoint.tokenizer, smol_checkpoint.word_tokens
    assert len(words) == len(tokenizer)
    ids = tokenizer("Lord Justice Justice 2000, 'ok'")["input_ids"]
    pieces = [(tokenizer.decode([i]), bool(words[i])) for i in ids]
    assert pieces[1:3] == [(" Justice", True), (" Justice", True)]
    assert [piece for piece, word in pieces[3:] if word] == ["ok"]


def test_generate_rejects_bad_input_clearly(smol_checkpoint):
    from npalign.inference import ContextEmbeddings, generate, user_latents

    wrong = ContextEmbeddings(np.zeros((2, 128), np.float32), np.zeros((2, 128), np.float32))
    with pytest.raises(
        ValueError, match=r"context 0: chosen embeddings have shape \(2, 128\).*384"
    ):
        user_latents(smol_checkpoint, [wrong])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(smol_checkpoint, ["Hi?", "  "], None)
    with pytest.raises(ValueError, match="exceed the model's limit"):
        generate(smol_checkpoint, ["word " * 9000], None, max_new_tokens=8)


def test_cached_reference_logprobs_change_no_score(policy_and_base):
    from npalign.data.episodes import sample_episodes
    from npalign.data.preferences import PairTable
    from npalign.data.sequences import TokenizedPairs
    from npalign.evaluation.policy import implicit_reward_accuracy

    policy, *_ = policy_and_base
    perturb(policy)
    rng = np.random.default_rng(0)
    rows = 12
    pairs = PairTable(
        pair_id=np.array([f"p{i}" for i in range(rows)]),
        prompt_id=np.array([f"q{i}" for i in range(rows)]),
        features_a=rng.normal(size=(rows, 16)).astype(np.float32),
        features_b=rng.normal(size=(rows, 16)).astype(np.float32),
        user=np.array(["u0", "u1"] * (rows // 2)),
        user_type=np.array(["a", "b"] * (rows // 2)),
        choice=rng.integers(0, 2, rows).astype(np.int8),
    )
    tokens = TokenizedPairs(
        *(
            [rng.integers(3, 64, rng.integers(2, 6)).astype(np.int32) for _ in range(rows)]
            for _ in range(3)
        ),
        pad_id=0,
    )
    episodes = sample_episodes(pairs, 10, 0, 3, 2, seed=0)
    references: dict[int, torch.Tensor] = {}
    args = (policy, True, False, pairs, tokens, episodes)
    fresh = implicit_reward_accuracy(*args, references, batch_size=3)
    assert references  # filled on the first pass
    cached = implicit_reward_accuracy(*args, references, batch_size=3)
    np.testing.assert_array_equal(fresh, cached)


def test_a_row_that_fails_in_a_batch_fails_alone(smol_checkpoint):
    """What the endpoint's batch does when one request's row still breaks `generate`: the other
    rows get their answers, the broken one its own exception."""
    from npalign.serving import generate_isolated

    z = torch.zeros(3, LATENT)
    prompts = ["What happened today?", "   ", "Any news?"]
    out = generate_isolated(smol_checkpoint, prompts, z, [3, 3, 3])
    assert isinstance(out[1], ValueError) and "prompt 0 is empty" in str(out[1])
    assert [isinstance(o, str) for o in out] == [True, False, True]
    alone = [generate_isolated(smol_checkpoint, [p], z[:1], [3])[0] for p in prompts[::2]]
    assert [out[0], out[2]] == alone


def test_the_export_loads_with_plain_transformers_and_peft(tmp_path, smol_checkpoint_folder):
    """The adapter on the base model, without npalign, gives the policy's logits at z = 0; the
    steering files hold FiLM and the encoder exactly."""

    from peft import PeftModel
    from safetensors.torch import load_file
    from test_job import load_job
    from transformers import AutoModelForCausalLM

    from npalign.models.policy import load_policy, truncate_blocks
    from npalign.pretrained import model_path

    out = tmp_path / "exported"
    assert load_job("export_policy").main([str(smol_checkpoint_folder), "--out", str(out)]) == 0
    steering = json.loads((out / "steering.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(model_path(steering["policy"]["base"]))
    truncate_blocks(base, steering["policy"]["num_layers"])  # the test policy keeps one block
    outside = PeftModel.from_pretrained(base, out / "adapter").eval()

    policy = load_policy(smol_checkpoint_folder).policy
    ids = torch.tensor([[5, 17, 29, 41, 53]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = policy.logits(ids, mask, None)
        theirs = outside(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(theirs, ours)
    saved = load_file(str(out / "steering.safetensors"))
    for name, tensor in policy.state_dict().items():
        if name.startswith(("film.", "encoder.")):
            torch.testing.assert_close(saved[name], tensor)
    assert steering["latent_scale"] == policy.latent_scale == 2.5  # saved, loaded, exported
    assert steering["latent_centre"] == policy.latent_centre.tolist() == [0.25] * LATENT
    card = (out / "README.md").read_text()
    assert "LoRA rank 4" in card
    # the checkpoint's default guards
    assert "no token 4-gram twice in an answer, no word token more than 2 times in a row" in card
    with pytest.raises(FileExistsError):
        load_job("export_policy").main([str(smol_checkpoint_folder), "--out", str(out)])


def test_activation_checkpointing_gives_the_same_gradients_film_included():
    """The blocks are recomputed in backward; FiLM(z) must act the same there (its hook runs
    outside the recomputed part), so every trained gradient is unchanged."""
    from npalign.config import PolicyConfig
    from npalign.models.policy import steerable, transformer_blocks

    grads = []
    for checkpointing in (False, True):
        config = PolicyConfig(
            hidden_dim=16, latent_dim=LATENT, lora_rank=4, gradient_checkpointing=checkpointing
        )
        torch.manual_seed(0)
        policy = steerable(tiny_lm(), config, feature_dim=16).train()
        blocks = transformer_blocks(policy.lm)
        assert all(block.gradient_checkpointing == checkpointing for block in blocks)
        perturb(policy)
        torch.manual_seed(2)
        ids = torch.randint(3, 64, (2, 10))
        context = torch.randn(2, 3, 16), torch.randn(2, 3, 16), torch.ones(2, 3)
        z = policy.latent(*context)
        logits = policy.logits(ids, torch.ones_like(ids), z)
        logits.logsumexp(-1).sum().backward()
        grads.append(
            {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        )
    assert set(grads[0]) == set(grads[1])
    assert any(n.startswith("film.") for n in grads[0]) and any("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_all_linear_lora_adapts_every_linear_layer_but_the_head():
    from npalign.config import PolicyConfig
    from npalign.models.policy import steerable

    config = PolicyConfig(hidden_dim=16, latent_dim=LATENT, lora_targets="all-linear")
    policy = steerable(tiny_lm(), config, feature_dim=16)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in policy.named_parameters()}
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert linear <= adapted and "lm_head" not in adapted


def test_a_bfloat16_lm_runs_with_float32_film_and_encoder():
    lm = tiny_lm().to(torch.bfloat16)
    policy = SteerablePolicy(lm, ContextEncoder(16, 32, LATENT), LATENT).eval()
    perturb(policy)
    ids = torch.randint(3, 64, (2, 10))
    z = policy.latent(torch.randn(2, 3, 16), torch.randn(2, 3, 16), torch.ones(2, 3))
    assert policy.film[0].gamma.weight.dtype == torch.float32
    logits = policy.logits(ids, torch.ones_like(ids), z)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    unconditioned = policy.logits(ids, torch.ones_like(ids), None)
    assert not torch.equal(logits, unconditioned)


def test_the_1p5b_config_builds_on_the_meta_device_and_its_zero3_shards_fit_8_gpus():
    """configs/steer_policy_1p5b.yaml on Qwen2.5-1.5B-Instruct's architecture (its published
    config; the weights cannot be downloaded here), built without memory on the meta device:
    the trained part is LoRA on every linear layer + FiLM + encoder, and under ZeRO-3 on 8 GPUs
    each holds a small share of the weights and optimizer state."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from npalign.config import PolicyJobConfig, load_config
    from npalign.models.policy import steerable, transformer_blocks
    from npalign.train.deepspeed import check_deepspeed_config

    job = load_config("configs/steer_policy_1p5b.yaml", schema=PolicyJobConfig)
    qwen = Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(qwen, dtype=torch.bfloat16)
        policy = steerable(lm, job.policy, feature_dim=384)
    assert len(policy.film) == len(transformer_blocks(policy.lm)) == 28
    assert all(block.gradient_checkpointing for block in transformer_blocks(policy.lm))
    frozen = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert 1.5e9 < frozen < 1.6e9  # Qwen2.5-1.5B: 1.54 B parameters
    # rank-128 LoRA on 7 projections x 28 blocks (148 M), FiLM (2 x 256 x 1536 x 28: 22 M), encoder
    assert 160e6 < trained < 180e6

    ds = check_deepspeed_config(job.train)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    workers = job.train.num_workers
    micro = ds["train_micro_batch_size_per_gpu"]
    assert micro * ds["gradient_accumulation_steps"] * workers == job.train.batch_size
    # ZeRO-3 shards: bf16 weights (2 bytes) for all, fp32 master + Adam moments (12 bytes) and a
    # bf16 gradient (2 bytes) for the trained part
    per_gpu_gb = (2 * (frozen + trained) + 14 * trained) / workers / 1e9
    assert per_gpu_gb < 1.5


def test_latent_frame_puts_full_context_users_around_zero_at_one_in_norm(tmp_path):
    from test_preferences import small_table

    from npalign.config import ModelConfig, PolicyJobConfig
    from npalign.data.episodes import collate, episode_arrays, sample_episodes
    from npalign.models.policy import starting_encoder
    from npalign.models.reward import build_reward_model, save_reward_model
    from npalign.train.policy import SCALE_USERS, with_latent_frame

    pairs = small_table(rows=200, dim=16)
    model = ModelConfig(hidden_dim=32, latent_dim=LATENT)
    torch.manual_seed(0)
    save_reward_model(
        tmp_path / "npbtl", "npbtl", model, 16, build_reward_model("npbtl", model, 16).state_dict()
    )
    tree = {
        "data": {"source": "steer", "max_context": 10},
        "policy": {"hidden_dim": 32, "latent_dim": LATENT, "encoder_init": str(tmp_path / "npbtl")},
    }
    job = PolicyJobConfig.model_validate(tree)
    measured = with_latent_frame(job, pairs).policy
    scale, centre = measured.latent_scale, torch.tensor(measured.latent_centre)
    users = sample_episodes(pairs, SCALE_USERS, 10, 10, job.data.num_targets, job.train.seed)
    c = collate(episode_arrays(users, ("context", "target")), pairs)
    encoder = starting_encoder(job.policy, 16)
    policy = SteerablePolicy(tiny_lm(), encoder, LATENT, latent_scale=scale, latent_centre=centre)
    with torch.no_grad():
        z = policy.latent(c.context_chosen, c.context_rejected, c.context_mask)
        # the centre is the users' mean, not the empty context's latent
        no_pairs = torch.zeros_like(c.context_mask[:1])
        empty_mean = encoder(c.context_chosen[:1], c.context_rejected[:1], no_pairs).mean[0]
    assert scale != pytest.approx(1.0, abs=0.1)  # the encoder's own scale is not 1
    assert z.square().sum(-1).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    assert z.mean(0).abs().max().item() < 1e-5
    assert (empty_mean - centre).norm() > 0.1 * scale
    empty = torch.zeros(1, 10, dtype=torch.bool)
    assert torch.equal(
        policy.latent(c.context_chosen[:1], c.context_rejected[:1], empty),
        z[:0].new_zeros(1, LATENT),
    )
    # set by hand, with a fresh encoder, or with no context to read, the scale is left as it is
    fixed = job.model_copy(update={"policy": job.policy.model_copy(update={"latent_scale": 2.0})})
    assert with_latent_frame(fixed, pairs).policy.latent_scale == 2.0
    fresh = job.model_copy(update={"policy": job.policy.model_copy(update={"encoder_init": None})})
    blind = job.model_copy(update={"data": job.data.model_copy(update={"max_context": 0})})
    for unmeasured in (fresh, blind):
        p = with_latent_frame(unmeasured, pairs).policy
        assert p.latent_scale is None and p.latent_centre is None
    # an encoder that gives every user one latent is refused, naming it
    flat = build_reward_model("npbtl", model, 16)
    for weight in flat.context_encoder.parameters():
        weight.data.zero_()
    save_reward_model(tmp_path / "flat", "npbtl", model, 16, flat.state_dict())
    tree["policy"]["encoder_init"] = str(tmp_path / "flat")
    with pytest.raises(ValueError, match="flat: its encoder gives every user the same latent"):
        with_latent_frame(PolicyJobConfig.model_validate(tree), pairs)


def test_encoder_lr_0_keeps_the_encoder_and_trains_film_and_lora_at_their_rates():
    from npalign.config import PolicyJobConfig
    from npalign.train.policy import PolicyTask

    policy = SteerablePolicy(tiny_lm(), ContextEncoder(16, 32, LATENT), LATENT)
    rates = {"latent_lr": 1e-3, "encoder_lr": 0.0}
    job = PolicyJobConfig.model_validate({"policy": rates})
    groups = PolicyTask(job, 16, True, {}).param_groups(policy, 1e-4)
    by_name = {id(p): n for n, p in policy.named_parameters()}
    names = {g["lr"]: {by_name[id(p)].split(".")[0] for p in g["params"]} for g in groups}
    assert names == {1e-4: {"lm"}, 0.0: {"encoder"}, 1e-3: {"film"}}
    # unset, a fresh encoder trains with FiLM and an NP-BTL's is kept
    for start, encoder_rate in ((None, 1e-3), ("NPBTL", 0.0)):
        rates = {"latent_lr": 1e-3, "encoder_init": start}
        job = PolicyJobConfig.model_validate({"policy": rates})
        groups = PolicyTask(job, 16, True, {}).param_groups(policy, 1e-4)
        assert sorted(g["lr"] for g in groups) == sorted([1e-4, 1e-3, encoder_rate])
