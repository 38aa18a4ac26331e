"""Firmware: register map, driver, training step and schedules. Imports nothing from hw/, sim/ or model/."""
