"""feddmmr: fast federated next-item recommendation (FedSASRec, FedDMMR)."""

__version__ = "0.1.0"
