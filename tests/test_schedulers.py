"""Schedulers by A1111 names and diffusers class names, built from the pipeline's own config."""

import diffusers
import pytest
from helpers import max_pixel_diff

import sdlab
from sdlab.schedulers import (
    A1111_SCHEDULERS,
    describe_scheduler,
    from_a1111,
    make_scheduler,
    scheduler_names,
    to_a1111,
)


@pytest.mark.parametrize("name", list(A1111_SCHEDULERS))
def test_every_a1111_name_builds_and_is_described_back(sd1_pipe, name):
    scheduler = make_scheduler(name, sd1_pipe.scheduler.config)
    assert type(scheduler).__name__ == A1111_SCHEDULERS[name][0]
    # "Simple" and "SGM Uniform" are both diffusers' trailing spacing: one config, described as the first
    assert describe_scheduler(scheduler) == name.replace(" Simple", " SGM Uniform")
    # the model's training schedule is kept
    assert scheduler.config.beta_schedule == sd1_pipe.scheduler.config.beta_schedule


def test_names_are_matched_loosely_and_class_names_work(sd1_pipe):
    assert type(make_scheduler("dpm++_2m_karras", sd1_pipe.scheduler.config)).__name__ == "DPMSolverMultistepScheduler"
    assert make_scheduler("dpm++ 2m karras", sd1_pipe.scheduler.config).config.use_karras_sigmas
    assert (
        type(make_scheduler("UniPCMultistepScheduler", sd1_pipe.scheduler.config)).__name__ == "UniPCMultistepScheduler"
    )


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
    # Forge's FLUX text says "Sampler: Euler, Schedule type: Simple": the model's own flow schedule
    assert (
        type(make_scheduler(from_a1111("Euler", "Simple"), flux_pipe.scheduler.config)).__name__
        == "FlowMatchEulerDiscreteScheduler"
    )
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("Euler Karras", flux_pipe.scheduler.config)
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("DPM++ 2M Karras", flux_pipe.scheduler.config)


def test_schedule_types_survive_a_config_built_in_memory():
    # A scheduler made in memory lists the options it left at their defaults (`_use_default_values`);
    # diffusers drops those keys when it builds another class from the config: Karras was lost.
    base = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    ).config
    assert "use_karras_sigmas" in base["_use_default_values"]
    for name, (_cls, overrides) in A1111_SCHEDULERS.items():
        built = make_scheduler(name, base).config
        assert {k: built[k] for k in overrides} == overrides, name


@pytest.mark.parametrize(
    "sampler, schedule, name",
    [
        ("DPM++ 2M SDE", "Automatic", "DPM++ 2M SDE Exponential"),  # A1111 v1.10's default schedule per sampler
        ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),
        ("DPM2 a", "Automatic", "DPM2 a Karras"),
        ("Euler a", "Automatic", "Euler a"),
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M", "Uniform", "DPM++ 2M"),
        ("Euler", "SGM Uniform", "Euler SGM Uniform"),
        ("Euler", "Simple", "Euler Simple"),
        ("DPM++ 3M SDE", "Exponential", "DPM++ 3M SDE Exponential"),
        ("DPM++ 2M SDE Heun", "Beta", "DPM++ 2M SDE Heun Beta"),
        ("DPM++ 2M", "karras", "DPM++ 2M Karras"),  # v1.6-v1.8's global schedule setting, written by its name
        ("DPM++ 2M", "sgm_uniform", "DPM++ 2M SGM Uniform"),
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # before v1.9: the schedule is in the sampler's name
        ("DPM++ 2M SDE Exponential", None, "DPM++ 2M SDE Exponential"),
        ("DPM++ 2M", None, "DPM++ 2M"),
        ("DDIM", "Karras", "DDIM"),  # A1111 runs DDIM on its own timesteps whatever the schedule type
    ],
)
def test_a1111_sampler_and_schedule_type_pairs(sd1_pipe, sampler, schedule, name):
    assert from_a1111(sampler, schedule) == name
    make_scheduler(name, sd1_pipe.scheduler.config)  # sdlab builds it


def test_schedule_types_set_what_diffusers_documents(sd1_pipe):
    base = sd1_pipe.scheduler.config
    sde = make_scheduler("DPM++ 2M SDE Exponential", base).config
    assert (sde.algorithm_type, sde.use_exponential_sigmas, sde.use_karras_sigmas) == ("sde-dpmsolver++", True, False)
    heun = make_scheduler("DPM++ 2M SDE Heun", base).config
    assert (heun.algorithm_type, heun.solver_type) == ("sde-dpmsolver++", "heun")
    assert make_scheduler("DPM++ 3M SDE", base).config.solver_order == 3
    sgm = make_scheduler("Euler SGM Uniform", base)
    sgm.set_timesteps(10)
    assert sgm.config.timestep_spacing == "trailing" and int(sgm.timesteps[0]) == 999
    assert make_scheduler("Euler Beta", base).config.use_beta_sigmas


def test_a1111_names_are_written_as_a1111_reads_them():
    assert to_a1111("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert to_a1111("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert to_a1111("DPM++ 2M") == ("DPM++ 2M", "Uniform")  # not "Automatic": that is Karras in A1111
    assert to_a1111("Euler a") == ("Euler a", "Automatic")
    assert to_a1111("UniPCMultistepScheduler") == ("UniPCMultistepScheduler", None)
    for name in A1111_SCHEDULERS:
        assert from_a1111(*to_a1111(name)) == name


def test_a_schedule_type_changes_the_image_and_does_not_stick(sd1_pipe):
    plain = sdlab.generate(sd1_pipe, "a red circle", seed=3, num_inference_steps=3, scheduler="Euler")
    sgm = sdlab.generate(sd1_pipe, "a red circle", seed=3, num_inference_steps=3, scheduler="Euler SGM Uniform")
    assert sgm.records[0]["scheduler"] == "Euler SGM Uniform"
    assert max_pixel_diff(plain.image, sgm.image) > 0
    trailing = make_scheduler("Euler SGM Uniform", sd1_pipe.scheduler.config)
    again = make_scheduler("Euler", trailing.config)  # a bare name is the model's own spacing again
    assert again.config.timestep_spacing == make_scheduler("Euler", sd1_pipe.scheduler.config).config.timestep_spacing


@pytest.mark.parametrize(
    "name, reason, near",
    [
        ("Euler a Karras", "cannot build A1111's 'Euler a' with schedule type 'Karras'", "Euler Karras"),
        ("DPM++ 2S a", "A1111's 'DPM++ 2S a' sampler has no diffusers scheduler", "DPM2 a"),
        ("DPM++ 2M Align Your Steps", "schedule type 'Align Your Steps'", "DPM++ 2M Karras"),
        ("DPM++ 2M Karas", "", "DPM++ 2M Karras"),
        (
            "UniPC Karras",
            "cannot build A1111's 'UniPC' with schedule type 'Karras'",
            "UniPC",
        ),  # never silently plain UniPC
    ],
)
def test_names_sdlab_cannot_build_list_the_near_names(sd1_pipe, name, reason, near):
    with pytest.raises(ValueError) as info:
        make_scheduler(name, sd1_pipe.scheduler.config)
    message = str(info.value)
    assert reason in message
    assert near in message.split("near names: ")[1]
