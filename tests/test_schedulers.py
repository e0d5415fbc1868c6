"""Schedulers by A1111 names and diffusers class names, built from the pipeline's own config."""

import pytest

import sdlab
from sdlab.schedulers import A1111_SCHEDULERS, describe_scheduler, make_scheduler, scheduler_names


@pytest.mark.parametrize("name", list(A1111_SCHEDULERS))
def test_every_a1111_name_builds_and_is_described_back(sd1_pipe, name):
    scheduler = make_scheduler(name, sd1_pipe.scheduler.config)
    assert type(scheduler).__name__ == A1111_SCHEDULERS[name][0]
    assert describe_scheduler(scheduler) == name
    # the model's training schedule is kept
    assert scheduler.config.beta_schedule == sd1_pipe.scheduler.config.beta_schedule


def test_names_are_matched_loosely_and_class_names_work(sd1_pipe):
    assert type(make_scheduler("dpm++_2m_karras", sd1_pipe.scheduler.config)).__name__ == "DPMSolverMultistepScheduler"
    assert make_scheduler("dpm++ 2m karras", sd1_pipe.scheduler.config).config.use_karras_sigmas
    assert type(make_scheduler("UniPCMultistepScheduler", sd1_pipe.scheduler.config)).__name__ == "UniPCMultistepScheduler"


def test_karras_does_not_leak_into_other_schedulers(sd1_pipe):
    karras = make_scheduler("DPM++ 2M Karras", sd1_pipe.scheduler.config)
    plain = make_scheduler("Euler", karras.config)
    assert not plain.config.use_karras_sigmas


def test_set_scheduler_replaces_the_pipeline_scheduler(sd1_pipe):
    old = sd1_pipe.scheduler
    try:
        sdlab.set_scheduler(sd1_pipe, "UniPC")
        assert type(sd1_pipe.scheduler).__name__ == "UniPCMultistepScheduler"
        r = sdlab.generate(sd1_pipe, "x", seed=0, num_inference_steps=2)
        assert r.records[0]["scheduler"] == "UniPC"
    finally:
        sd1_pipe.scheduler = old


def test_unknown_name_lists_valid_ones(sd1_pipe):
    with pytest.raises(ValueError, match="Euler a"):
        sdlab.set_scheduler(sd1_pipe, "Euler z")


def test_flux_takes_flow_matching_schedulers_only(flux_pipe):
    assert scheduler_names(flux_pipe) == ["Euler", "Heun"]
    assert type(make_scheduler("Euler", flux_pipe.scheduler.config)).__name__ == "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("DPM++ 2M Karras", flux_pipe.scheduler.config)
