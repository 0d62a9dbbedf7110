from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_trainer

from recmodel.data import Event, Item
from recmodel.train import IncrementalTrainer


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_hyperparameters_are_stored_under_their_names():
    trainer = make_trainer(lr=0.01, dropout=0.2)
    hp = trainer.hyperparameters()
    assert hp["lr"] == trainer.lr == 0.01 and hp["dropout"] == 0.2 and hp["seed"] == 3
    assert trainer.model.hyperparameters()["max_len"] == trainer.max_len
    # The device asked for is the one used; without one, the GPU when there is one.
    assert trainer.device.type == "cpu" and {p.device.type for p in trainer.model.parameters()} == {"cpu"}
    assert make_trainer(device=None).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_training_learns_the_stream_and_tracks_histories(trained, small_stream):
    events = list(small_stream.events())
    assert trained.events_trained == len(events)
    hist = trained.user_histories()
    last = {}
    for e in events:
        last.setdefault(e.user_id, []).append((e.item_id, e.type, e.timestamp_ms))
    for user, entries in last.items():
        assert hist[user] == entries[-trained.max_len :]
    # The model ranks users' taste categories far above chance.
    hits = total = 0
    for user in list(hist)[:40]:
        recs = trained.recommend(user, k=10)
        taste = small_stream.user_taste(user, final=True) | small_stream.user_taste(user)
        hits += sum(bool(small_stream.item_categories(i) & taste) for i, _ in recs)
        total += len(recs)
    assert hits / total > 0.6  # chance is about 2/6 categories


def test_loss_goes_down_with_training(small_stream):
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    events = list(small_stream.events())
    first = trainer.train_events(events[:600])
    for _ in range(2):
        trainer.train_events(events[600:])
    later = trainer.train_events(events[:600])
    assert first.events == 600 and first.steps > 0
    assert later.loss < first.loss - 0.3


def test_recommend_excludes_seen_and_unavailable_items(trained):
    user, hist = next(iter(trained.user_histories().items()))
    recs = trained.recommend(user, k=20)
    seen = {h[0] for h in hist}
    assert len(recs) == 20 and not seen & {i for i, _ in recs}
    scores = [s for _, s in recs]
    assert scores == sorted(scores, reverse=True)
    top = recs[0][0]
    trained.upsert_items([Item(top, title="gone", available=False)])
    try:
        assert top not in {i for i, _ in trained.recommend(user, k=20)}
    finally:
        trained.upsert_items([Item(top, title="back", available=True)])


def test_unknown_items_and_dislikes_do_not_break_training():
    trainer = make_trainer(capacity=3)
    events = [
        Event(f"e{n}", "u", f"new{n % 5}", "dislike" if n % 4 == 0 else "click", 1.0, 1000 * n) for n in range(20)
    ]
    stats = trainer.train_events(events)
    assert stats.events == 20 and np.isfinite(stats.loss)
    assert len(trainer.vocab) == 3 and trainer.vocab.evictions > 0
    assert len(trainer.user_histories()["u"]) == 12


def test_checkpoint_restore_continue_is_bit_exact(tmp_path, small_stream):
    events = list(small_stream.events())[:1500]
    kwargs = dict(dropout=0.1)  # dropout makes the RNG state matter
    straight = make_trainer(**kwargs)
    straight.upsert_items(small_stream.items())
    straight.train_events(events[:700])
    straight.train_events(events[700:])

    first = make_trainer(**kwargs)
    first.upsert_items(small_stream.items())
    first.train_events(events[:700])
    path = first.save_checkpoint(tmp_path / "ckpt.pt", extra={"offsets": {"streamrec.events": {"0": 700}}})
    del first
    torch.manual_seed(12345)  # global RNG noise must not matter
    resumed, extra = IncrementalTrainer.load_checkpoint(path, device="cpu")
    assert extra == {"offsets": {"streamrec.events": {"0": 700}}}
    assert resumed.events_trained == 700
    resumed.train_events(events[700:])

    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.user_histories() == straight.user_histories()
    assert resumed.vocab.items() == straight.vocab.items()
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_a_checkpoint_of_the_earlier_format_restores_and_resumes_bit_exactly(tmp_path, small_stream):
    from recmodel.checkpoint import read_checkpoint

    events = list(small_stream.events())[:1500]
    straight = make_trainer()
    straight.upsert_items(small_stream.items())
    straight.train_events(events[:700])
    straight.train_events(events[700:])
    first = make_trainer()
    first.upsert_items(small_stream.items())
    first.train_events(events[:700])
    path = first.save_checkpoint(tmp_path / "ckpt.pt", extra={"offsets": {"0": 700}})
    state, extra = read_checkpoint(path)
    assert "plain" not in state and len(state["histories"]) > 10 and state["vocab"]["ids"]
    # Format 1 pickled the histories, metadata, counts and ids in place.
    torch.save({**state, "format": 1, "extra": extra}, path)
    resumed, extra = IncrementalTrainer.load_checkpoint(path, device="cpu")
    assert extra == {"offsets": {"0": 700}}
    resumed.train_events(events[700:])
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed.user_histories() == straight.user_histories()
    assert resumed.transitions.state_dict() == straight.transitions.state_dict()


def test_a_checkpoint_saved_before_adam_was_fused_resumes_fused(tmp_path, small_stream):
    from recmodel.checkpoint import read_checkpoint, write_checkpoint

    events = list(small_stream.events())[:1500]
    first = make_trainer()
    first.upsert_items(small_stream.items())
    first.train_events(events[:700])
    state, extra = read_checkpoint(first.save_checkpoint(tmp_path / "ckpt.pt"))
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # as torch.optim.Adam(...) without fused=True saved it
    resumed, _ = IncrementalTrainer.load_checkpoint(write_checkpoint(tmp_path / "old.pt", state, extra), device="cpu")
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    first.train_events(events[700:])
    resumed.train_events(events[700:])
    a, b = _params(first), _params(resumed)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_state_dict_is_a_snapshot_that_later_training_does_not_change(tmp_path, small_stream):
    from recmodel.checkpoint import write_checkpoint

    events = list(small_stream.events())[:1500]
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(events[:700])
    histories, table = trainer.user_histories(), trainer.transitions.state_dict()
    state = trainer.state_dict()
    trainer.train_events(events[700:])  # the trainer's own containers move on
    restored, _ = IncrementalTrainer.load_checkpoint(write_checkpoint(tmp_path / "ckpt.pt", state), device="cpu")
    assert restored.events_trained == 700
    assert restored.user_histories() == histories != trainer.user_histories()
    assert restored.transitions.state_dict() == table


def test_a_checkpoint_with_unreadable_values_is_refused_naming_the_file(tmp_path, small_stream):
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(list(small_stream.events())[:300])
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    state = torch.load(path, weights_only=True)
    state["plain"] = torch.frombuffer(bytearray(b"{not json"), dtype=torch.uint8)
    torch.save(state, path)
    with pytest.raises(ValueError, match="ckpt.pt"):
        IncrementalTrainer.load_checkpoint(path, device="cpu")


def test_prequential_reports_metrics_before_training(small_stream):
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    events = list(small_stream.events())
    early = trainer.prequential(events[:800], k=10)
    late = trainer.prequential(events[800:1800], k=10)
    assert early["predictions"] > 300
    assert 0.0 <= early["hr@10"] <= 1.0
    assert late["hr@10"] > early["hr@10"]
    assert trainer.events_trained == 1800


def test_idle_replay_keeps_learning_what_the_stream_showed(small_stream):
    events = list(small_stream.events())
    trainer = make_trainer()
    trainer.upsert_items(small_stream.items())
    trainer.train_events(events)
    epoch = trainer.replay_epoch_steps()
    per_user = Counter(e.user_id for e in events)
    kept = [min(n, max(trainer.max_len, trainer.replay_history)) for n in per_user.values()]
    windows = sum(-(-(n - 1) // trainer.max_len) for n in kept)  # each kept history cut as offline cuts it
    assert windows > len(per_user)  # the stream's users have more than one window each
    assert epoch == -(-windows // trainer.replay_batch)
    first = trainer.replay(epoch)
    later = trainer.replay(8 * epoch)
    assert first.steps == epoch and later.steps == 8 * epoch and first.events == 0
    assert trainer.events_trained == len(events)  # replay trains on what was seen, it consumes nothing
    assert later.loss < first.loss


def test_the_standing_holdout_is_input_but_never_a_target(small_stream):
    from recmodel.holdout import is_holdout

    events = list(small_stream.events())
    held = [e for e in events if is_holdout(e.user_id, e.item_id, 0.2)]
    assert 0.1 * len(events) < len(held) < 0.3 * len(events)  # about the fraction, always the same ones
    assert held == [e for e in events if is_holdout(e.user_id, e.item_id, 0.2)]
    trainer = make_trainer(holdout_fraction=0.2)
    trainer.upsert_items(small_stream.items())
    trainer.train_events(events)
    e = held[-1]
    entry = (e.item_id, e.type, e.timestamp_ms)
    assert entry in trainer.user_histories()[e.user_id] or len(trainer.user_histories()[e.user_id]) == trainer.max_len
    assert not trainer.is_target(e.user_id, entry)
    tokens = trainer._tokens([entry], e.user_id)
    assert tokens and tokens[0][3] is False


def test_a_held_out_pair_is_never_a_target_however_often_it_repeats(small_stream):
    """The holdout is chosen per (user, item): a user who repeats an interaction never has it trained one time
    and held out the next (which made the gate favour versions that had not seen the latest repetitions)."""
    from recmodel.holdout import is_holdout

    events = list(small_stream.events())
    user, item = next((e.user_id, e.item_id) for e in events if is_holdout(e.user_id, e.item_id, 0.2))
    kept = next(e.item_id for e in events if not is_holdout(user, e.item_id, 0.2))
    trainer = make_trainer(holdout_fraction=0.2)
    trainer.upsert_items(small_stream.items())
    t0 = events[-1].timestamp_ms
    repeats = [Event(f"rep-{n}", user, it, "purchase", 1.0, t0 + 1000 * n)
               for n, it in enumerate([item, kept, item, kept, item])]
    trainer.train_events(events + repeats)
    assert not any(trainer.is_target(user, (item, "purchase", t0 + 1000 * n)) for n in range(0, 5, 2))
    assert all(trainer.is_target(user, (kept, "purchase", t0 + 1000 * n)) for n in range(1, 5, 2))
    assert [t[3] for t in trainer._tokens([(e.item_id, e.type, e.timestamp_ms) for e in repeats], user)] == \
        [False, True, False, True, False]


def test_id_dropout_trains_warm_items_through_their_text_alone_and_never_serves_so():
    trainer = make_trainer(id_dropout=0.999999)
    trainer.upsert_items([Item(f"i{n}", title=f"item {n}") for n in range(4)])
    slots = torch.tensor([trainer.vocab.slot(f"i{n}") for n in range(4)])
    trainer._counts[slots.numpy()] = 1000.0
    trainer._update_id_gate(slots.numpy())
    items = trainer.model.items
    with torch.no_grad():
        text_only = torch.nn.functional.normalize(items.text_proj(items.text_table[slots]), dim=-1)
        id_only = torch.nn.functional.normalize(items.id_emb(slots), dim=-1)
        items.train()
        torch.testing.assert_close(items(slots), text_only)
        items.eval()
        served = items(slots)
    assert torch.allclose(served, id_only, atol=0.02) and not torch.allclose(served, text_only, atol=0.1)


def test_replay_draws_older_windows_of_the_kept_history_and_served_histories_stay_max_len(small_stream):
    events = list(small_stream.events())
    trainer = make_trainer(replay_history=10_000)
    trainer.upsert_items(small_stream.items())
    trainer.train_events(events)
    user, n = Counter(e.user_id for e in events).most_common(1)[0]
    assert n > 2 * trainer.max_len + 1
    assert all(len(h) <= trainer.max_len for h in trainer.user_histories().values())
    first_slot = trainer.vocab.slot(next(e.item_id for e in events if e.user_id == user))
    drawn = [w for _ in range(40) for w in trainer._replay_windows(trainer.replay_batch)]
    assert any(tokens[0][0] == first_slot for tokens, _ in drawn)  # a window starting at the user's first event
    assert all(2 <= len(tokens) <= trainer.max_len + 1 for tokens, _ in drawn)


def test_a_step_bounded_to_max_users_trains_a_sample_and_still_takes_every_event_in(tmp_path, small_stream):
    """train_events(max_users=...) (a trainer catching up with the stream): each step trains the new windows of
    at most that many users, the others are counted as shed; histories and transitions take every event as
    without the bound."""
    events = list(small_stream.events())[:1500]
    bounded, full = make_trainer(replay_batch=0), make_trainer(replay_batch=0)
    seen: dict[int, list[int]] = {id(bounded): [], id(full): []}
    for trainer in (bounded, full):
        trainer.upsert_items(small_stream.items())
        step = trainer.train_step
        trainer.train_step = lambda windows, step=step, log=seen[id(trainer)]: (log.append(len(windows)), step(windows))[1]
    stats = bounded.train_events(events, batch_size=500, max_users=10)
    full_stats = full.train_events(events, batch_size=500)

    users = [len({e.user_id for e in events[lo:lo + 500]}) for lo in range(0, len(events), 500)]
    assert min(users) > 40  # 60 users: most of them in every 500 events
    # A user with more than max_len new events needs two windows.
    assert len(seen[id(bounded)]) == 3 and all(10 <= n < 20 for n in seen[id(bounded)]), seen
    assert sum(seen[id(full)]) >= sum(users)
    assert stats.users_shed == bounded.users_shed == sum(users) - 30
    assert full_stats.users_shed == full.users_shed == 0
    assert stats.events == bounded.events_trained == len(events)
    assert bounded.user_histories() == full.user_histories()
    assert bounded.transitions.state_dict() == full.transitions.state_dict()
    # Fewer targets trained: the counts behind logQ and the ID gates count the trained ones only.
    assert 0 < bounded._counts.sum() < full._counts.sum()

    path = bounded.save_checkpoint(tmp_path / "ckpt.pt")
    assert IncrementalTrainer.load_checkpoint(path, device="cpu")[0].users_shed == bounded.users_shed
