def scenario_peers(ctx):
    raise NotImplementedError
