"""Ensemble forecasts: forecast models (teacher / student / persistence), the autoregressive
rollout, and the WeatherBench 2-schema forecast store. The pipeline is `pipelines/forecast.py`."""

from gencast_rmmd.forecast.model import ForecastModel as ForecastModel
from gencast_rmmd.forecast.model import load_forecast_model as load_forecast_model
from gencast_rmmd.forecast.model import persistence_model as persistence_model
from gencast_rmmd.forecast.rollout import Rollout as Rollout
from gencast_rmmd.forecast.rollout import member_keys as member_keys
from gencast_rmmd.forecast.rollout import run_key as run_key
