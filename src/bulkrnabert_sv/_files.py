"""Names of the files and folders this package writes, in one place.

Each saver owns its format, but a reader of one format recognises the folders the others wrote
(``load_model`` given a fine-tuned model or a ``tl.pretrain`` run folder says what to pass
instead), so the names live below every layer.
"""

from __future__ import annotations

#: A fine-tuned model's description (``FinetunedModel.save``).
FINETUNED_META_FILE = "finetuned.json"
#: A fine-tuned model's encoder sub-folder (a ``BulkRNABert.save`` folder).
FINETUNED_BACKBONE_DIR = "backbone"
#: A ``tl.pretrain`` run's configuration (compared before the run resumes).
PRETRAIN_CONFIG_FILE = "pretrain_config.json"
#: Sub-folder of a ``tl.pretrain`` run's folder where the finished model is saved.
PRETRAIN_FINAL_MODEL_DIR = "model"
