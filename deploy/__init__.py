"""protpeft.deploy"""
