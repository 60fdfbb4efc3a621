"""``checkpoint-records serve``: a registry that receives records from many jobs and serves them back
through the read APIs of OpenAI fine-tuning, Llama Stack post-training and FlexAI.

Needs the ``server`` extra (FastAPI, uvicorn); nothing on the training side imports this package.
"""
