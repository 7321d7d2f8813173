"""pdserve.autoscaler"""
