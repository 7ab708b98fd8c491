import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. This must be decided before anything
# imports triton; on a GPU machine the real compiler is used.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
