"""Level 1: tokens by source and GPU-hours add up along an init_from chain (kura.train.rollup)."""
from kura.train.rollup import chain_gpu_hours, chain_rollup, is_synthetic, run_tokens_by_source


def test_tokens_split_by_blend_weights_and_add_up_along_the_chain():
    web = run_tokens_by_source(1000, ["0.9", "train_deduplicated", "0.1", "train_synthetic_qa"],
                               {"train_deduplicated": "deduplicated", "train_synthetic_qa": "synthetic/qa"})
    assert web == {"deduplicated": 900, "synthetic/qa": 100}
    first = chain_rollup(None, web)
    assert first == {"tokens_by_source": web, "tokens": 1000, "synthetic_tokens": 100, "synthetic_share": 0.1}
    instruct = run_tokens_by_source(500, ["0.8", "train_synthetic_tags_qa", "0.2", "train_replay"],
                                    {"train_synthetic_tags_qa": "synthetic{tags=qa}", "train_replay": "replay"})
    second = chain_rollup(first, instruct)
    assert second["tokens"] == 1500 and second["synthetic_tokens"] == 100 + 400
    assert second["tokens_by_source"]["replay"] == 100, "replayed tokens are counted once, as replay"
    assert second["synthetic_share"] == round(500 / 1500, 4)
    assert is_synthetic("synthetic/qa") and is_synthetic("synthetic{teacher=a}") and not is_synthetic("replay")
    assert chain_gpu_hours(chain_gpu_hours(None, 12.5), None) == 12.5, "a CPU run or an unknown adds nothing"
