"""``final.pt``: what a finished run leaves for :func:`bayes_dc.trained.load.load_run` (the trained model, the final
clustering space and posterior, the input the model expects). Defined below both the loop that writes it and the
API that reads it. The format names the layout; a reader refuses another one (bump it when the layout changes)."""

FINAL_CHECKPOINT = "final.pt"
FINAL_FORMAT = "bayes_dc-final/1"
