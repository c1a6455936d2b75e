"""protpeft.trainer"""
