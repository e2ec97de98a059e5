"""InFi on the edge: the detection service a camera offloads its pictures to."""
