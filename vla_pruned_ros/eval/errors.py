"""The one error type of the bag evaluation."""


class EvalError(ValueError):
    """
    A bag, recording or option that cannot be evaluated; the message names the problem.

    Raised for: a path that is not a rosbag2, no usable rgb or 3D input, ambiguous topics, a
    topic given on the command line that the bag lacks or that has another type, a bag from
    which no observation could be built, and a live recording with no action chunks.
    """
