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
