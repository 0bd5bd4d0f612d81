"""Ensemble forecast evaluation: fair CRPS, ensemble-mean RMSE, spread/skill, rank histograms.

Knows no model: it scores any forecast store in WeatherBench 2's schema against ERA5-schema truth.
The Beam/in-memory pipeline that drives these functions is `pipelines/evaluate.py`.
"""

from gencast_rmmd.evaluation.crps import fair_crps as fair_crps
from gencast_rmmd.evaluation.crps import fair_crps_parts as fair_crps_parts
from gencast_rmmd.evaluation.rank_histogram import observation_ranks as observation_ranks
from gencast_rmmd.evaluation.rank_histogram import reliability_index as reliability_index
from gencast_rmmd.evaluation.regions import REGIONS as REGIONS
from gencast_rmmd.evaluation.regions import latitude_weights as latitude_weights
from gencast_rmmd.evaluation.scorecard import finalize as finalize
from gencast_rmmd.evaluation.scorecard import load_summary as load_summary
from gencast_rmmd.evaluation.scorecard import summary as summary
from gencast_rmmd.evaluation.statistics import chunk_statistics as chunk_statistics
