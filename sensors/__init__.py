"""Sensors and schedules, built from the environment of the process loading the code."""

from .inbox_sensor import build_inbox_sensor
from .schedules import build_fine_tune_schedule


def build_sensors() -> list:
    return [build_inbox_sensor()]


def build_schedules() -> list:
    return [build_fine_tune_schedule()]
