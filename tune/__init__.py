"""protpeft.tune"""
