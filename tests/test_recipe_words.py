from axlab.core.recipe import Step, describe_recipe


def test_recipes_in_words_follow_their_parameters():
    assert describe_recipe([]) == "the base model"
    heads = {"0": [1, 2, 3], "5": list(range(12)), "3": []}
    assert describe_recipe([Step("prune_heads", heads=heads)]) == "remove 15 heads in 2 layers"
    text = describe_recipe([Step("prune_heads", heads={"1": [0]}), Step("quantize_gpfq", bits=3, group_size=64)])
    assert text == "remove 1 head in 1 layer; GPFQ 3-bit weights, groups of 64"
    assert describe_recipe([Step("quantize_int8", embeddings=True)]) == "int8 weights and activations + int8 embeddings"
    assert "2.5-bit average" in describe_recipe([Step("quantize_gpfq", bits=4, avg_bits=2.5)])
    assert describe_recipe([Step("quantize_gptq", bits=3)]) == "GPTQ 3-bit weights"


def test_self_distillation_in_words():
    assert (describe_recipe([Step("drop_layers", layers=[4, 5]), Step("self_distill", steps=300, alpha=1.0)])
            == "drop layers [4, 5]; self-distil the intermediate blocks toward the last (300 steps)")
    assert describe_recipe([Step("self_distill", steps=50, alpha=0.0)]) == "fine-tune on the labels (50 steps)"
