from diffprune.archs.tokenizer import BOS, EOS, build_tokenizer, build_vocab


def test_words_become_single_tokens_and_specials_come_last():
    vocab, merges = build_vocab(["circle", "red"])
    assert vocab["circle</w>"] and vocab["red</w>"]
    assert vocab[EOS] == len(vocab) - 1 and vocab[BOS] == len(vocab) - 2
    assert len(set(merges)) == len(merges)


def test_words_sharing_letters_still_become_single_tokens():
    from diffprune.testbed.models import VOCABULARY

    # "right" contributes the merge "r i", which a left-to-right chain for "triangle" would never get past
    tok = build_tokenizer(["right", *VOCABULARY])
    for word in VOCABULARY:
        assert tok.convert_ids_to_tokens(tok(word).input_ids) == [BOS, word + "</w>", EOS], word
    caption = "a purple star to the right of an orange triangle"
    assert len(tok(caption).input_ids) == len(caption.split()) + 2


def test_encoding_padding_and_reload(tmp_path):
    tok = build_tokenizer(["circle", "red"])
    ids = tok("a Red circle!", padding="max_length", max_length=10).input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[:6] == [BOS, "a</w>", "red</w>", "circle</w>", "!</w>", EOS]
    assert tokens[6:] == [EOS] * 4 and len(ids) == 10
    tok.save_pretrained(tmp_path)
    from transformers import CLIPTokenizer

    assert CLIPTokenizer.from_pretrained(tmp_path)("a red circle").input_ids == tok("a red circle").input_ids


def test_t5_and_gemma_tokenizers_build_offline_with_their_special_ids(tmp_path):
    from transformers import AutoTokenizer

    from diffprune.archs.tokenizer import SPACE, build_gemma_tokenizer, build_t5_tokenizer
    from diffprune.testbed.models import VOCABULARY

    t5 = build_t5_tokenizer(VOCABULARY)
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    caption = "a purple star to the right of an orange triangle"
    ids = t5(caption).input_ids
    assert t5.convert_ids_to_tokens(ids) == [SPACE + w for w in caption.split()] + ["</s>"]
    assert t5.decode(t5("a Red circle, 3!").input_ids, skip_special_tokens=True) == "a Red circle, 3!"
    gemma = build_gemma_tokenizer(VOCABULARY)
    assert (gemma.pad_token_id, gemma.eos_token_id, gemma.bos_token_id) == (0, 1, 2)
    tokens = gemma.convert_ids_to_tokens(gemma(caption).input_ids)
    assert tokens == ["<bos>", "a"] + [SPACE + w for w in caption.split()[1:]]
    assert gemma.decode(gemma("é ∑ a red").input_ids, skip_special_tokens=True) == "é ∑ a red"  # byte fallback
    for tok in (t5, gemma):
        tok.save_pretrained(tmp_path / type(tok).__name__)
        back = AutoTokenizer.from_pretrained(tmp_path / type(tok).__name__)
        assert back(caption).input_ids == tok(caption).input_ids
