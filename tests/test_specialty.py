"""Specialties from HPO organ systems, on the real ontology."""

from medkit import specialty


def test_phenotype_organ_systems():
    spec = specialty.phenotype_specialties()
    assert spec["HP:0001250"] == {"Neurology"}  # Seizure
    assert "Cardiology" in spec["HP:0001639"]  # Hypertrophic cardiomyopathy
    assert spec["HP:0000118"] == frozenset()  # the root itself is no system


def test_disease_gene_and_drug_specialties(entities, relations):
    sp = specialty.entity_specialties(entities, relations)
    assert sp["MONDO:0007376"] == "Ophthalmology"  # fleck corneal dystrophy
    assert sp["MONDO:0012648"] == "Metabolic medicine"  # isobutyryl-CoA dehydrogenase deficiency
    assert sp["NCBIGene:2717"] == sp["MONDO:0010526"]  # GLA follows Fabry disease
    diseases = {v for k, v in sp.items() if k.startswith("MONDO:")}
    assert len(diseases - {specialty.FALLBACK}) >= 15
    assert all(v for v in sp.values())
