"""`python -m archbench ...` runs the command line (also under `torchrun ... -m archbench finetune ...`)."""
from archbench.cli import main

if __name__ == "__main__":
    main()
