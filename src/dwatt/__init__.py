"""dwatt: layer fusion (DWAtt, Concat, ScalarMix, …) for Hugging Face Transformers encoders.

Importing the package registers model type "dwatt" with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_dwatt import DWATT_CODE_VERSION, DWAttConfig
from .modeling_dwatt import (
    FUSION_HEADS,
    DWAttForSequenceClassification,
    DWAttForTokenClassification,
    DWAttModel,
    DWAttPreTrainedModel,
)

__version__ = DWATT_CODE_VERSION

AutoConfig.register(DWAttConfig.model_type, DWAttConfig, exist_ok=True)
AutoModel.register(DWAttConfig, DWAttModel, exist_ok=True)
AutoModelForSequenceClassification.register(DWAttConfig, DWAttForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(DWAttConfig, DWAttForTokenClassification, exist_ok=True)

__all__ = [
    "DWAttConfig",
    "DWAttModel",
    "DWAttPreTrainedModel",
    "DWAttForSequenceClassification",
    "DWAttForTokenClassification",
    "FUSION_HEADS",
    "__version__",
]
