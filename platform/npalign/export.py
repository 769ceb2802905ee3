"""A trained policy as files that load without npalign (`jobs/export_policy.py`):

    adapter/                 the LoRA part, a standard PEFT adapter folder:
                             PeftModel.from_pretrained(base, "adapter") is the policy at z = 0
    steering.safetensors     FiLM (film.<block>.gamma/beta.weight) and the context encoder
    steering.json            their shapes, where FiLM sits, how z is made, the embedding recipe
    README.md                a model card: base, settings, training data, the run's table

With z = 0 (a user nobody knows anything about) FiLM is the identity, so the adapter alone is
the policy. A user's z comes from the encoder over embeddings of their choices; FiLM then
scales and shifts the hidden state after every transformer block (steering.json says how).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from npalign.config import DecodingConfig
from npalign.files import write_json, write_text
from npalign.models.policy import SPEC_FILE, load_policy
from npalign.pretrained import model_path

CARD = """# Steerable policy (NP-DPO), exported by npalign

Base model: `{base}`{blocks}. LoRA rank {rank} (alpha {alpha}) on {targets}; FiLM after each of
the {num_blocks} transformer blocks, latent {latent}; context encoder width {hidden}
({aggregation} aggregation) over {feature_dim}-wide embeddings of a user's choices.

## Load it

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_path}")
policy = PeftModel.from_pretrained(base, "adapter")   # the policy for a user with no context
tokenizer = AutoTokenizer.from_pretrained("{base_path}")
```

`steering.safetensors` + `steering.json` hold the context encoder and FiLM:
z = (μ(C) − c) / s from the encoder over the user's (chosen, rejected) embeddings (c:
`latent_centre`, or μ(∅) where it is null; s: `latent_scale`), 0 for no context, then after
block l h ← (1 + W_l z) ⊙ h + V_l z. Where `policy.latent` is variational, μ(C) is the first
`latent_dim` outputs of the encoder's last layer (the rest is q(z | C)'s spread).
Embeddings: {embed}. With npalign installed, `npalign.models.policy.load_policy` on the original
checkpoint does all of this.

## Decoding

npalign decodes this policy greedily, with {guards}, counted over the answer's own tokens only
(`npalign.inference.answer_guards`). HF generate's `no_repeat_ngram_size` and
`repetition_penalty` are close, but they count the prompt too: with them an answer cannot repeat
a name from its prompt. HF generate has no word-run guard.

## Training data

{data}

## Evaluation (from the training run)

```
{table}
```
"""


def run_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint was written in (RUN/checkpoints/<model>/checkpoint_*)."""
    run = checkpoint.resolve().parents[2] if len(checkpoint.resolve().parents) > 2 else None
    return run if run is not None and (run / "config.yaml").exists() else None


def guards_text(decoding: DecodingConfig) -> str:
    """The checkpoint's loop guards in words, for the model card."""
    guards = []
    if decoding.no_repeat_ngram_size:
        guards.append(f"no token {decoding.no_repeat_ngram_size}-gram twice in an answer")
    if decoding.repetition_penalty != 1.0:
        guards.append(f"repetition penalty {decoding.repetition_penalty}")
    if decoding.max_word_run:
        guards.append(f"no word token more than {decoding.max_word_run} times in a row")
    return ", ".join(guards) or "no loop guards"


def model_card(spec: dict, run: Path | None) -> str:
    policy = spec["policy"]
    config = (run / "config.yaml").read_text() if run else ""
    data = config[config.find("data:") :].split("\nmodels:")[0] if "data:" in config else ""
    table = (run / "table.txt").read_text().strip() if run and (run / "table.txt").exists() else ""
    return CARD.format(
        base=policy["base"],
        blocks=f", cut to its first {policy['num_layers']} blocks" if policy["num_layers"] else "",
        rank=policy["lora_rank"],
        alpha=policy["lora_alpha"],
        targets=", ".join(policy["lora_targets"]),
        num_blocks=spec["num_blocks"],
        latent=policy["latent_dim"],
        hidden=policy["hidden_dim"],
        aggregation=policy["aggregation"],
        feature_dim=spec["feature_dim"],
        base_path=model_path(policy["base"]),
        embed=json.dumps(spec["embed"]),
        data=f"```yaml\n{data.strip()}\n```" if data else "(no run folder found beside it)",
        table=table or "(no table found)",
        guards=guards_text(DecodingConfig(**policy.get("decoding", {}))),
    )


def export_policy(checkpoint: Path, out: Path) -> Path:
    """Writes the export of `checkpoint` to `out` (a new folder, whole or not at all)."""
    from safetensors.torch import save_file

    if out.exists():
        raise FileExistsError(f"{out} exists: export into a new folder")
    loaded = load_policy(checkpoint)
    policy = loaded.policy
    spec = json.loads((checkpoint / SPEC_FILE).read_text())
    spec["num_blocks"] = len(policy.film)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        policy.lm.save_pretrained(tmp / "adapter")  # LoRA only: FiLM and encoder are not in lm
        steering = {
            name: tensor.contiguous()
            for name, tensor in policy.state_dict().items()
            if name.startswith(("film.", "encoder."))
        }
        save_file(steering, str(tmp / "steering.safetensors"))
        write_json(
            tmp / "steering.json",
            {
                "film": "after transformer block l: h <- (1 + gamma_l(z)) * h + beta_l(z), "
                "linear maps without bias (film.<l>.gamma/beta.weight, (width, latent))",
                "latent": "z = (mu(C) - latent_centre) / latent_scale from the encoder "
                "(encoder.*), 0 for an empty context; without latent_centre, mu(empty context) "
                "stands in for it; where policy.latent is variational the encoder's last layer "
                "gives mu and q(z | C)'s spread: mu is its first latent_dim outputs",
                "latent_scale": policy.latent_scale,
                "latent_centre": spec["policy"].get("latent_centre"),
                "use_latent": spec["use_latent"],
                "feature_dim": spec["feature_dim"],
                "num_blocks": spec["num_blocks"],
                "policy": spec["policy"],
                "embed": spec["embed"],
            },
        )
        write_text(tmp / "README.md", model_card(spec, run_of(checkpoint)))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
