"""prompts/miniature.txt is the world's prompt sets, as the recipe splits them."""

from fgrpo.data.prompts import read_prompts, split_prompts
from fgrpo.miniature.world import parse_prompt, prompt_file_text, prompt_sets
from fgrpo.recipe.io import load_recipe_file
from tests.conftest import REPO


def test_prompt_file_is_generated_from_the_world():
    # Regenerate with: python -c "from fgrpo.miniature.world import prompt_file_text; print(prompt_file_text(), end='')"
    assert (REPO / "prompts" / "miniature.txt").read_text() == prompt_file_text()


def test_recipe_holds_out_exactly_the_unseen_pair_prompts():
    recipe = load_recipe_file(REPO / "recipes" / "miniature.py")
    train, heldout = split_prompts(read_prompts(REPO / recipe.prompts.file), recipe.prompts.heldout)
    sets = prompt_sets()
    assert heldout == [s.prompt for s in sets.heldout]
    assert train == [s.prompt for s in sets.rl_train]
    assert not set(train) & set(heldout)
    # Held-out prompts ask for colour/shape pairs pre-training never showed; no pre-training scene is held out.
    assert all(not parse_prompt(p).seen_in_pretraining for p in heldout)
    assert not {s.prompt for s in sets.pretrain} & set(heldout)
