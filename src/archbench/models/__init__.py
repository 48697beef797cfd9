"""archbench's own transformers models, for architectures transformers does not ship (RWKV-7: rwkv7.py,
RWKV-6: rwkv6.py, RWKV-5: rwkv5.py).

Importing this package registers them with transformers' AutoConfig / AutoModelForCausalLM, so
`save_pretrained` directories (and fla-hub HF-format RWKV-7 repos, which use the same model_type and names)
load through `AutoModelForCausalLM.from_pretrained` without remote code. BlinkDL `.pth` checkpoints are
converted to such a directory by rwkv_convert.py; RWKV's "world" tokenizer is rwkv_world.py.
"""
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from archbench.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM
from archbench.models.rwkv6 import Rwkv6Config, Rwkv6ForCausalLM
from archbench.models.rwkv7 import Rwkv7Config, Rwkv7ForCausalLM
from archbench.models.rwkv_world import RwkvWorldTokenizer

AutoConfig.register("rwkv7", Rwkv7Config, exist_ok=True)
AutoModelForCausalLM.register(Rwkv7Config, Rwkv7ForCausalLM, exist_ok=True)
AutoTokenizer.register(Rwkv7Config, tokenizer_class=RwkvWorldTokenizer, exist_ok=True)  # also by class name
AutoConfig.register("rwkv6", Rwkv6Config, exist_ok=True)
AutoModelForCausalLM.register(Rwkv6Config, Rwkv6ForCausalLM, exist_ok=True)
AutoTokenizer.register(Rwkv6Config, tokenizer_class=RwkvWorldTokenizer, exist_ok=True)
AutoConfig.register("rwkv5", Rwkv5Config, exist_ok=True)
AutoModelForCausalLM.register(Rwkv5Config, Rwkv5ForCausalLM, exist_ok=True)
AutoTokenizer.register(Rwkv5Config, tokenizer_class=RwkvWorldTokenizer, exist_ok=True)

# class name -> class, for zoo.py
CONFIGS = {"Rwkv5Config": Rwkv5Config, "Rwkv6Config": Rwkv6Config, "Rwkv7Config": Rwkv7Config}

__all__ = ["CONFIGS", "Rwkv5Config", "Rwkv5ForCausalLM", "Rwkv6Config", "Rwkv6ForCausalLM", "Rwkv7Config",
           "Rwkv7ForCausalLM", "RwkvWorldTokenizer"]
