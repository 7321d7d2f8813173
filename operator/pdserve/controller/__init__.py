"""pdserve.controller"""
