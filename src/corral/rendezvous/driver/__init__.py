"""The rendezvous's driver: the only code that does its store I/O.

One object per role, sharing one :class:`~.session.Session`: it runs the
protocol's effects (:mod:`corral.rendezvous.protocol`) through the store
(:class:`~.store.RunStore`) and feeds store events and timer expiries back in.

* :mod:`.joining`: joining a round, following its closer, waiting for the next;
* :mod:`.closing`: closing a round (the closer's reducer);
* :mod:`.running`: watching a running round (the member's reducer), a lost
  member, a bump;
* :mod:`.ending`: failures, success, stops, leaving, the job's outcome;
* :mod:`.quarantine`: the quarantine records.
"""
