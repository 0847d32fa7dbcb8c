"""Computational kernels shared by components: each algorithm sits in its own module with its
plain recurrent form (the ground truth, and the decoding step) beside its fast form, as fla puts
`naive.py` next to `chunk.py`. Components choose among them; tests compare them."""
