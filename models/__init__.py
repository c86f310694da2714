"""Gluon channel-attention modules and CIFAR ResNets that carry them.

Knows nothing of training: it builds networks and measures their size.
"""
from .attention import ATTENTIONS, UnknownNameError, create_attention, get_attention
from .cifar_resnet import MODELS, get_model, parse_model_name
from .stats import ModelStats, count_macs, count_parameters, model_stats, stats_table

__all__ = ['ATTENTIONS', 'MODELS', 'ModelStats', 'UnknownNameError', 'count_macs',
           'count_parameters', 'create_attention', 'get_attention', 'get_model',
           'model_stats', 'parse_model_name', 'stats_table']
