"""The packaged default models load offline; SmolLM2's GGUF converts once into a cached folder."""

from pathlib import Path

from npalign.pretrained import model_path


def test_smollm2_converts_once_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_path("smollm2"))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_path("smollm2") == str(folder)  # the second call reuses the conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 30
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_minilm_is_a_plain_hf_folder():
    assert (Path(model_path("minilm")) / "config.json").exists()
    assert model_path("some-org/some-model") == "some-org/some-model"
