"""Evaluating every new checkpoint, off the training node: ``checkpoint-records evaluate``.

Where things are: :mod:`.sources` takes the work from the store's evaluation queue (``store/evaluations.py``),
on this machine or through a registry server; :mod:`.checkout` finds the checkpoint's files (its folder,
or its uploaded copy pulled and verified); :mod:`.runner` runs the evaluator's command; :mod:`.results`
reads its metrics and puts them on the record (pure functions); :mod:`.worker` ties them together, one
claimed checkpoint at a time; :mod:`.commands` is the command line. The server's side is
``server/evaluations_api.py``.
"""
