"""From passes to scores: matching, per-object uncertainty, per-image informativeness, dense and
one-pass scores, novelty (pure tensor functions), and the pool-scoring run that drives them
(:mod:`det_al.scoring.score_pool`, with torchrun support in :mod:`det_al.scoring.distributed`)."""
