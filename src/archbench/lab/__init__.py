"""The architecture lab (issue 13): train every family from scratch on the same data and budget.

mqar.py (Zoology's multi-query associative recall), text.py (character-level text + tokenizer), shapes.py
(configs per architecture, --params matching), fastpath.py (fast differentiable recurrent mixers), train.py
(the recipe: TrainConfig, train), evaluate.py (validation loss/bpc, MQAR accuracy).
"""
