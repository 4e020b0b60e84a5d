"""A recipe file that cannot be a recipe is named for what it is, not for the first key validation misses."""

import pytest

from sau_trainer.pipeline.schema import RecipeError, load_recipe


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n"])
def test_an_empty_recipe_file_is_reported_as_empty(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"the recipe file {path} is empty" in message
    assert "name_or_path" not in message


def test_an_empty_file_with_overrides_is_validated_as_the_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("")
    recipe = load_recipe(path, ["model.shape=tiny"])
    assert recipe.model.shape == "tiny"
