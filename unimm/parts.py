"""Import every built-in part so that its ``@register`` decorator fills the registries."""

from .aligners import hybrid_split, mlp  # noqa: F401
from .backbones import causal_lm  # noqa: F401
from .encoders import hybrid, sam, shared_vq, siglip, timm_encoder  # noqa: F401
from .generation import flow_path, vae, vq_path, vq_tokenizer  # noqa: F401
from .heads import image_head  # noqa: F401
