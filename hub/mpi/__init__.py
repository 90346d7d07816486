"""The master patient index: matching (this package) and identity links (``hub.mpi.identity``).

Matching is normalise -> block -> compare -> score:

- ``identifiers``: what each identifier system is to the index (``unique``: a hard identifier,
  ``identifying``: a blocking key, ``ignored``), from a shipped table and the NamingSystems stored
  in the hub;
- ``normalise``: the features of a Patient (resident ID number checked and upgraded, names folded to
  simplified characters and read in pinyin with surname readings, phones, district code, birth date, sex);
- ``blocking``: the keys under which candidates are looked up, each block capped with an alert;
- ``compare``: the agreement level of each field between two Patients, and the hard vetoes;
- ``weights``: Fellegi-Sunter m/u per level (log2 weights, term-frequency adjusted names), as versioned
  JSON configuration, estimated from the platform's own data by EM (``hub mpi train``);
- ``matcher``: ranked candidates with score, grade and evidence; ``incremental``: the read model that
  matches each new or updated Patient as it arrives; ``listing``: the whole index for stewards (persons
  page by page, every Patient's link as export rows).
"""
