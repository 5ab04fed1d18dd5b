"""Event producers: the NVML GPU exporter (:mod:`agent.producers.gpu`) and the traffic SDK that inference servers
embed (:mod:`agent.producers.sdk`). Both publish the schemas of :mod:`agent.events` through :mod:`agent.kafka`."""
