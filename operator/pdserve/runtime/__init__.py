"""pdserve.runtime"""
