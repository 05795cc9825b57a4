"""``torchrun --nproc_per_node=P -m fastntk.scale ...``: the distributed driver
(:func:`fastntk.scale.distributed.main`)."""

from .distributed import main

main()
