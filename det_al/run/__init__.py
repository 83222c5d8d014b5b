"""The scoring run: checks once at the entry (:mod:`~det_al.run.checks`), pool images to result
lines (:mod:`~det_al.run.score_lines`, :mod:`~det_al.run.result_line`), streamed and resumable
(:mod:`~det_al.run.stream`), in shards or under torchrun (:mod:`~det_al.run.shards`,
:mod:`~det_al.run.distributed`), assembled into the ranking (:mod:`~det_al.run.assemble`);
:mod:`~det_al.run.pool_run` drives it. It uses the pure maths of :mod:`det_al.scoring` and the
passes of :mod:`det_al.inference`; :func:`det_al.score_images` and ``det-al score`` are its entries."""
