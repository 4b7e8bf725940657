"""Sensors and schedules."""

from .inbox_sensor import inbox_sensor
from .schedules import nightly_fine_tune

ALL_SENSORS: list = [inbox_sensor]
ALL_SCHEDULES: list = [nightly_fine_tune]
