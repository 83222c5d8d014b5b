"""``det-al serve``: det_al as a live Label Studio ML backend.

Label Studio calls four JSON endpoints of a connected "ML backend": ``/health``, ``/setup``,
``/predict`` (pre-annotations and a score per task, which its "Uncertainty sampling" orders by)
and ``/webhook`` (project events). The modules, one concept each:

- :mod:`det_al.serve.paths`: a task's image URL -> a file under the roots, refused elsewhere;
- :mod:`det_al.serve.predict`: the loaded model and the scored images -> one answer per task;
- :mod:`det_al.serve.journal`: annotation events appended durably, folded back into tasks;
- :mod:`det_al.serve.app`: the WSGI app and its endpoints;
- :mod:`det_al.serve.server`: load once, serve with the standard library (:func:`serve_backend`);
- :mod:`det_al.serve.retrain`: journal -> COCO -> fine-tune -> rescore -> new model version.
"""
