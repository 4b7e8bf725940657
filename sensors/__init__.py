"""Sensors and schedules."""

ALL_SENSORS: list = []
ALL_SCHEDULES: list = []
