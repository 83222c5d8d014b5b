"""From passes to scores: matching, per-object uncertainty, per-image informativeness, dense and
one-pass scores, novelty; pure tensor functions (the run that drives them is :mod:`det_al.run`)."""
