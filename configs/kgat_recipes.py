"""Contrastive KGAT on the synthetic recipe graph (jaxslu/recommendation/data.py: recipes with
cuisines, ingredients and keywords; users with latent tastes; browse / add-to-cart / cook-along
interactions with decreasing noise, each its own CKG relation; held-out targets are the last
cook-alongs).

    jaxslu train --config configs/kgat_recipes.py --workdir runs/kgat_recipes --eval

get_config(variant): "contrastive_kgat" (default), "kgat", "bpr_mf", "tiny" (seconds, tests).
"""
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "jaxslu_config_kgat_movielens_base", Path(__file__).with_name("kgat_movielens.py"))
_ml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ml)

VARIANTS = _ml.VARIANTS
TINY = {"users": 120, "recipes": 90, "cuisines": 6, "ingredients": 40, "keywords": 12,
        "browse": [10, 20], "add_to_cart": [4, 8], "cook_along": [5, 10]}


def get_config(variant: str = "contrastive_kgat"):
    cfg = _ml.base("kgat_recipes_contrastive_kgat", "recipe_graph", {"seed": 0},
                   steps=300, batch_size=4096, checkpoint_every=50)
    return _ml.variant_of(cfg, variant, tiny=TINY)
