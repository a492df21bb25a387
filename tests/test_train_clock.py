"""The training clock's own rules (its round trip through real checkpoints is tested in
tests/test_resume.py and tests/test_slurm.py)."""

from lmlab.train_clock import TrainClock


def test_a_checkpoints_time_is_taken_up_only_by_the_fit_being_timed():
    clock = TrainClock()
    clock.load_state_dict({"train_time_s": 5.0})  # no fit timed yet: not this run's
    assert clock.seconds == 0.0
    with clock.timing():
        clock.load_state_dict({"train_time_s": 5.0})  # the fit resuming from a checkpoint
        saved = clock.state_dict()["train_time_s"]  # a checkpoint saved while it trains
    assert 5.0 <= saved <= clock.seconds == 5.0 + clock.session_s
    # trainer.validate/test(ckpt_path=best) after the fit restore callbacks' state too: the best
    # checkpoint's (earlier) time must not replace the run's
    clock.load_state_dict({"train_time_s": 1.0})
    assert clock.earlier == 5.0 and clock.state_dict()["train_time_s"] == clock.seconds
